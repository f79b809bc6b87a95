"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class IdgenError(Exception):
    """Bad input or configuration; the message names the problem in one line."""


class CheckpointError(IdgenError):
    """A checkpoint does not match the architecture it is loaded into."""


class NoFaceError(IdgenError):
    """An identity image in which no face was found."""
