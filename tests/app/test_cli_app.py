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
