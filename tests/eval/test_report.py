import json
import shutil
import subprocess

import pytest

from idgen.eval.report import write_report
from idgen.eval.runner import Method, run_eval
from tests.eval.fakes import METHODS, FakeGenerator, benchmark, fake_models, markdown_tables


def chromium() -> str | None:
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bench = benchmark(root / "photos")
    methods = [*METHODS, Method("uniform", id_weight=0.5)]
    run_eval(root / "out", bench, methods, FakeGenerator(), fake_models(), progress=False)
    summary = write_report(root / "out", bench, methods)
    return root / "out", summary


def test_summary_means_are_the_means_of_the_rows(evaluated):
    out, summary = evaluated
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    uniform = [r["contamination_px"] for r in rows if r["method"] == "uniform"]
    assert summary["methods"]["uniform"]["contamination_px"]["mean"] == pytest.approx(
        sum(uniform) / len(uniform)
    )
    assert summary["methods"]["uniform"]["contamination_px"]["n"] == 12
    assert summary["methods"]["spatial"]["contamination_px"]["mean"] == 0.0


def test_markdown_table_has_a_row_per_method_and_counts(evaluated):
    out, _ = evaluated
    text = (out / "report.md").read_text()
    assert "| none |" in text and "| spatial |" in text and "| uniform-w0.5 |" in text
    assert "| 12/12 | 0 |" in text  # scored / expected, images without a face
    results, metrics = markdown_tables(text)
    assert results[0][0] == "method" and [r[0] for r in results[1:]] == [
        "none",
        "uniform",
        "spatial",
        "uniform-w0.5",
    ]
    by_metric = {row[0]: row for row in metrics[1:]}
    assert by_metric["FaceSim"][1] == "fake-face (higher is better)"
    assert by_metric["FaceSim"][2:] == ["12 / 0"] * 4  # n / skipped, per method
    assert by_metric["CLIP-I (vs no-id)"][2:] == ["0 / 12", "12 / 0", "12 / 0", "12 / 0"]
    assert by_metric["Aesthetic"][1] == "not computed: no aesthetic model"
    assert by_metric["PoseDiv (deg)"][1].startswith("not computed: idgen ships no loader for Hopenet")
    assert "- CLIP-I (vs no-id), none: 12 skipped, the no-id image itself" in text
    assert "- Photos without a face: 0." in text
    assert "- Images without a face: none 0, uniform 0, spatial 0, uniform-w0.5 0" in text


def test_photos_without_a_face_are_named_in_the_report_and_the_page(tmp_path):
    from tests.eval.fakes import photo

    bench = benchmark(tmp_path / "photos", identities=2, prompts=1)
    photo((0, 0, 0)).save(tmp_path / "photos/id_1.png")  # FakeFaces: a black square is no face
    run_eval(tmp_path / "out", bench, METHODS, FakeGenerator(), fake_models(), progress=False)
    summary = write_report(tmp_path / "out", bench, METHODS)
    assert summary["photos_without_face"] == ["id_1"]
    assert summary["methods"]["spatial"]["facesim"]["skipped"] == {"no face in the reference photo": 1}
    text = (tmp_path / "out/report.md").read_text()
    assert "- Photos without a face: 1 (id_1)." in text
    assert "- FaceSim, spatial: 1 skipped, no face in the reference photo" in text
    page = (tmp_path / "out/index.html").read_text()
    assert "Photos without a face: 1 (id_1)." in page and "Images without a face: none 0, uniform 1" in page


def test_a_sweep_draws_metric_plots_against_id_weight(evaluated):
    out, summary = evaluated
    assert (out / "plots/contamination_px.png").stat().st_size > 1000
    assert any(p.endswith("facesim.png") for p in summary["plots"])


def test_html_uses_relative_links_only(evaluated):
    out, _ = evaluated
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert 'src="images/spatial/id_0/000-s7.png"' in page


@pytest.mark.skipif(chromium() is None, reason="needs chromium (the CI script installs it)")
def test_html_renders_offline_in_headless_chromium(evaluated, tmp_path):
    out, _ = evaluated
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = (out / "index.html").as_uri()
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1200,900", f"--screenshot={shot}", url], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    assert len(image.getcolors(1 << 20) or []) > 50  # pictures were drawn, not a blank page
    dom = subprocess.run([browser, *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert 'data-broken-images="0"' in dom
