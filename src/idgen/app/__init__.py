"""`idgen app`: a web page over the same library call as `idgen generate` (`idgen.generation.generate`).

Local and offline: it binds to 127.0.0.1 unless told otherwise, makes no share link, sends no analytics,
and needs nothing from outside the machine. Uploads live in one temporary folder that is removed when the
server stops. Needs the `app` extra (gradio).

>>> app = start(pipe, record="demo world", port=7860)   # returns once the server listens
>>> app.url
'http://127.0.0.1:7860/'
>>> app.stop()
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from idgen.errors import IdgenError

LOCALHOST = "127.0.0.1"
MAX_UPLOAD = "20mb"
# The demo world's images are 64x64: shown enlarged, with their pixels kept sharp.
CSS = (
    "#image img, #compare img, #masks img "
    "{ image-rendering: pixelated; min-height: 192px; object-fit: contain; }"
)
QUEUE_SIZE = 16  # requests waiting beyond this are refused with a message, not queued for ever


@dataclass
class RunningApp:
    url: str
    page: Any
    workspace: Any
    busy: threading.Lock  # held while a generation runs

    def stop(self, wait: float = 60.0) -> None:
        """Stop the server, let a running generation finish (up to `wait` seconds: exiting under a
        running torch call can abort the interpreter), and remove every file the app wrote."""
        try:
            self.page.close(verbose=False)
            if self.busy.acquire(timeout=wait):
                self.busy.release()
        finally:
            self.workspace.close()


def import_gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before the import: gradio reads it then
    try:
        import gradio
    except ImportError:
        raise IdgenError("the app needs gradio: pip install 'idgen[app]'") from None
    return gradio


def check_address(host: str, port: int | None) -> None:
    """A one-line error now, before any model loads, where the server could not listen on host:port
    (None: gradio's search for a free port, which is not checked)."""
    if ":" in host:  # gradio writes http://{host}:{port}, which an IPv6 literal breaks
        raise IdgenError(f"cannot listen on {host!r}: the web server takes IPv4 addresses and host names")
    try:
        found = socket.getaddrinfo(host or "0.0.0.0", port or 0, type=socket.SOCK_STREAM)  # "": every address
        family, kind, proto, _, address = found[0]
    except (socket.gaierror, UnicodeError):
        raise IdgenError(
            f"cannot listen on {host!r}: not an address or host name this machine resolves"
        ) from None
    if port is None:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket does
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise IdgenError(f"port {port} on {host} is in use by another program") from None
            raise IdgenError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def start(
    pipe: Any,
    *,
    record: Any,
    host: str = LOCALHOST,
    port: int | None = None,
    examples: list[Any] | None = None,
    compare_by_default: bool = True,
    warnings: Callable[[str], list[str]] | None = None,
) -> RunningApp:
    """Serve the page for `pipe` (an IdentityFluxPipeline) on host:port (None: the first free port from
    7860) and return once it listens; the caller stops it."""
    check_address(host, port)
    import_gradio()
    from idgen.app.files import Workspace
    from idgen.app.form import Limits
    from idgen.app.page import AppModel, build_page

    workspace = Workspace()
    workspace.use_for_uploads()
    model = AppModel(pipe, record, Limits.of(pipe), compare_by_default, warnings or (lambda prompt: []))
    try:
        page = build_page(model, workspace, examples or [])
        page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
        page.launch(
            server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
            show_error=False, max_file_size=MAX_UPLOAD, ssr_mode=False, pwa=False, mcp_server=False,
            enable_monitoring=False, inbrowser=False, css=CSS,
        )  # fmt: skip
    except BaseException:
        workspace.close()
        raise
    return RunningApp(url=f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{page.server_port}/",
                      page=page, workspace=workspace, busy=model.lock)  # fmt: skip
