"""Where the app writes: one temporary folder, made at start and removed at stop.

`gradio/` is gradio's upload folder and cache (GRADIO_TEMP_DIR), cleaned by gradio's `delete_cache`;
`sessions/<session>/<n>/` holds one generation's mask GIF and sidecar until the browser tab closes.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


class Workspace:
    def __init__(self, parent: str | os.PathLike[str] | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="idgen-app-", dir=parent))
        self.uploads = self.root / "gradio"
        self.sessions = self.root / "sessions"
        self.uploads.mkdir()
        self.sessions.mkdir()
        self.counter = itertools.count()

    def use_for_uploads(self) -> None:
        """Point gradio's upload folder here; must run before the page's components are made."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.uploads)

    def session_folder(self, request: Any) -> Path:
        # The session id comes from the browser: keep only safe characters, never a path.
        name = re.sub(r"[^A-Za-z0-9_-]", "", str(getattr(request, "session_hash", None) or ""))[:64]
        return self.sessions / (name or "anonymous")

    def run_folder(self, request: Any) -> Path:
        folder = self.session_folder(request) / str(next(self.counter))
        folder.mkdir(parents=True)
        return folder

    def end_session(self, request: Any) -> None:
        """The tab closed: its outputs go (gradio's own copies go with `delete_cache`)."""
        shutil.rmtree(self.session_folder(request), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
