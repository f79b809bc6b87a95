"""`idgen app` on the command line: local by default, the generate command's model flags, one-line errors."""

from __future__ import annotations

from idgen.cli import build_parser, main


def test_defaults_are_local_and_the_model_flags_are_generates():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert (args.flux, args.pulid, args.encoder, args.device, args.dtype) == (None, None, None, None, None)
    assert args.world_adapter == "pulid" and args.detector == "none"
    generate = build_parser().parse_args(["generate", "--prompt", "p"])
    model_flags = ("flux", "pulid", "encoder", "detector", "device", "dtype", "world_adapter")
    assert {k: getattr(args, k) for k in model_flags} == {k: getattr(generate, k) for k in model_flags}


def test_a_bad_port_is_one_line_before_anything_loads(capsys):
    assert main(["app", "--port", "70000"]) == 1
    assert capsys.readouterr().err == "idgen: error: --port must be in [0, 65535], got 70000\n"


def _refused(argv, monkeypatch, capsys):
    """The error line of `idgen app ...`, checking that no model began to load."""
    import idgen.cli.app as cli_app

    def load(*args, **kwargs):
        raise AssertionError("a model began to load")

    monkeypatch.setattr(cli_app, "load_pipeline", load)
    assert main(["app", *argv]) == 1
    return capsys.readouterr().err


def test_a_port_in_use_is_one_line_before_anything_loads(monkeypatch, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _refused(["--port", str(port)], monkeypatch, capsys)
    assert err == f"idgen: error: port {port} on 127.0.0.1 is in use by another program\n"


def test_a_host_that_cannot_be_bound_is_one_line_before_anything_loads(monkeypatch, capsys):
    for host, why in (
        ("bad..host", "not an address or host name this machine resolves"),  # refused before any lookup
        ("::1", "the web server takes IPv4 addresses and host names"),
    ):
        assert (
            _refused(["--host", host], monkeypatch, capsys)
            == f"idgen: error: cannot listen on {host!r}: {why}\n"
        )
    # An IPv4 address of another machine resolves, but nothing here can listen on it.
    err = _refused(["--host", "192.0.2.1"], monkeypatch, capsys)  # TEST-NET-1, never assigned
    assert err == "idgen: error: cannot listen on 192.0.2.1:7860: Cannot assign requested address\n"
