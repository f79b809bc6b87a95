"""`idgen app` in a real headless Chromium (Debian's package, driven by playwright; no browser download).

One server for the module: `idgen app` in a subprocess on a free port, its temporary folder under the
test's own TMPDIR, so the test can see what the app writes and that it is gone after the stop.
Set IDGEN_APP_SCREENSHOT=assets/app.png to keep the page's screenshot for the README.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright_api = pytest.importorskip("playwright.sync_api")
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REFERENCES = ROOT / "src" / "idgen" / "world" / "assets" / "references"
PROMPT = "a person in a snowy forest at night, wearing a red shirt"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STEPS = 20  # the demo world's default
WAIT_MS = 90_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path):
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = os.environ | {"TMPDIR": str(tmp), "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        env.pop("GRADIO_SERVER_NAME", None)
        self.log = tmp / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", "idgen.cli", "app", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
            )  # fmt: skip
        self.wait_until_listening()

    def wait_until_listening(self, seconds: float = 150) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"idgen app exited: {self.log.read_text()[-2000:]}")
            if "idgen app: http" in self.log.read_text():
                return
            time.sleep(0.5)
        raise RuntimeError(f"idgen app did not start: {self.log.read_text()[-2000:]}")

    def workspaces(self) -> list[Path]:
        return sorted(self.tmp.glob("idgen-app-*"))

    def stop(self) -> int:
        if self.process.poll() is None:
            # SIGTERM, a service manager's stop: SIGINT is ignored by processes that a non-interactive
            # shell starts in the background, as CI may start this suite.
            self.process.send_signal(signal.SIGTERM)
            # The app lets a running generation finish (up to 60 s) before it exits; a loaded CI machine
            # needs room beyond that.
            try:
                return self.process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.process.kill()  # never leave a server behind a failed test
                self.process.wait()
                raise
        return int(self.process.returncode)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's package)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, server: Server, outside: list[str]):
    """A tab on the app in which every request off 127.0.0.1 is refused and noted: the page must work
    offline."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})

    def route(r):
        if r.request.url.startswith(server.url) or r.request.url.startswith(("data:", "blob:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(server.url)
    page.locator("#generate").wait_for(timeout=WAIT_MS)
    return page


def fill(page, photo: Path, prompt: str = PROMPT) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.locator("#photo img").first.wait_for(timeout=WAIT_MS)
    page.locator("#prompt textarea").fill(prompt)


def fetch(page, locator: str) -> bytes:
    """The bytes of the file an output shows (its <img> src or download link), through the page's own
    session."""
    element = page.locator(locator).first
    element.wait_for(timeout=WAIT_MS)
    url = element.get_attribute("src") or element.get_attribute("href")
    return page.request.get(url).body()


def sidecar_link(page) -> str | None:
    link = page.locator("#sidecar a")
    return link.first.get_attribute("href") if link.count() else None


def generate(page) -> None:
    """Press Generate and wait for this run's outputs (each run's sidecar is a new file)."""
    before = sidecar_link(page)
    page.locator("#generate").click()
    page.wait_for_function(
        "before => { const a = document.querySelector('#sidecar a'); return a && a.href !== before }",
        arg=before and page.evaluate("u => new URL(u, document.baseURI).href", before),
        timeout=WAIT_MS,
    )
    page.locator("#image img").wait_for(timeout=WAIT_MS)


def test_generate_shows_image_strip_masks_and_sidecar(server: Server, browser, tmp_path: Path):
    outside: list[str] = []
    page = open_page(browser, server, outside)
    fill(page, REFERENCES / "test_000.png")
    # The upload lands in the app's temporary folder and nowhere else under TMPDIR.
    (workspace,) = server.workspaces()
    generate(page)

    image = Image.open(io.BytesIO(fetch(page, "#image img")))
    assert image.size == (64, 64)
    lo, hi = image.convert("L").getextrema()
    assert hi - lo > 32, "the image is blank"
    strip = Image.open(io.BytesIO(fetch(page, "#compare img")))
    assert strip.size == (4 * 128, 128 + 12)  # four panels enlarged to 128 px, each under a 12 px label
    gif = Image.open(io.BytesIO(fetch(page, "#masks img")))
    assert gif.format == "GIF" and gif.n_frames == STEPS and gif.size == (128, 128 + 12)
    sidecar = json.loads(fetch(page, "#sidecar a"))
    assert sidecar["seed"] == 42 and sidecar["model"] == "demo world"
    assert sidecar["parameters"]["id_image"] == "test_000.png"  # the user's name, not the server's path
    assert sidecar["parameters"]["prompt"] == PROMPT

    uploads = [p for p in workspace.rglob("test_000.png")]
    assert uploads and all(workspace in p.parents for p in uploads)
    assert not [p for p in server.tmp.rglob("test_000.png") if workspace not in p.parents]
    assert outside == []
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("IDGEN_APP_SCREENSHOT"):
        keep_screenshot(shot, Path(os.environ["IDGEN_APP_SCREENSHOT"]))
    page.close()


def keep_screenshot(shot: Path, target: Path) -> None:
    """The README's screenshot: halved and quantised to stay small."""
    im = Image.open(shot).convert("RGB")
    im = im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=128).save(target, optimize=True)


def test_corrupt_upload_is_named_in_the_page_and_the_server_carries_on(
    server: Server, browser, tmp_path: Path
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    page = open_page(browser, server, [])
    page.locator("#photo input[type=file]").set_input_files(str(broken))
    page.get_by_text("photo is not a readable image file: broken.png").first.wait_for(timeout=WAIT_MS)
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    page.get_by_text("photo is not a readable image file: broken.png").first.wait_for(timeout=WAIT_MS)
    assert server.process.poll() is None
    page.close()


def test_empty_prompt_is_refused_in_the_page(server: Server, browser):
    page = open_page(browser, server, [])
    fill(page, REFERENCES / "test_001.png", prompt="   ")
    page.locator("#generate").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=WAIT_MS)
    page.close()


def test_two_tabs_at_once_get_their_own_results(server: Server, browser):
    prompts = [PROMPT, "a person on a beach, wearing a blue shirt"]
    tabs = [open_page(browser, server, []) for _ in prompts]
    for tab, prompt in zip(tabs, prompts, strict=True):
        fill(tab, REFERENCES / "test_002.png", prompt=prompt)
        tab.locator("#settings").get_by_text("Settings").first.click()
        tab.locator("#compare_toggle input").uncheck()  # one generation per run keeps the test short
    for tab in tabs:
        tab.locator("#generate").click()
    for tab in tabs:  # queued: the second runs when the first is done
        tab.wait_for_function("() => document.querySelector('#sidecar a') !== null", timeout=WAIT_MS)
    assert [json.loads(fetch(tab, "#sidecar a"))["parameters"]["prompt"] for tab in tabs] == prompts
    images = [Image.open(io.BytesIO(fetch(tab, "#image img"))).tobytes() for tab in tabs]
    assert images[0] != images[1]
    # Alone, the first tab's request gives the same image: nothing leaked between the queued runs.
    generate(tabs[0])
    assert Image.open(io.BytesIO(fetch(tabs[0], "#image img"))).tobytes() == images[0]
    for tab in tabs:
        tab.close()


def test_an_upload_over_the_size_limit_is_refused(server: Server):
    boundary = "idgenboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\0" * (21 * 1024 * 1024)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "gradio_api/upload", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert not list(server.tmp.rglob("big.png"))


def test_binds_only_to_localhost(server: Server):
    listening = listening_addresses(server.port)
    assert listening == {"127.0.0.1"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            pytest.skip("no /proc/net/tcp here")
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if width == 8 else address)
    return found


def test_stop_removes_every_file_the_app_wrote(server: Server):
    assert server.workspaces()
    code = server.stop()
    assert code == 0, server.log.read_text()[-3000:]
    assert server.workspaces() == []
