"""Collect scores into results.jsonl and summary.json; write the markdown table, plots and HTML grid."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idgen.eval.manifest import Benchmark
from idgen.eval.metrics import mean_ci
from idgen.eval.runner import NONE, Job, Method, iter_scores, mask_strip_path
from idgen.io import atomic_output, atomic_write_text

# (key, column title, higher is better?) in table order.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("clip_t", "CLIP-T", True),
    ("clip_i", "CLIP-I (vs no-id)", True),
    ("clip_i_ref", "CLIP-I-ref", True),
    ("facesim", "FaceSim", True),
    ("antifacesim", "AntiFaceSim", False),
    ("aesthetic", "Aesthetic", True),
    ("iq", "IQ", True),
    ("contamination_px", "Contamination px (0-255)", False),
    ("contamination_clip", "Contamination CLIP patches", False),
    ("backdrop_shift", "Backdrop shift (0-255)", False),
)


def collect(out: Path, benchmark: Benchmark, methods: Sequence[Method]) -> dict[str, Any]:
    """results.jsonl (a row per scored image, plan order) and summary.json (per method: mean, CI, counts)."""
    rows = list(iter_scores(out, benchmark, methods))
    with atomic_output(out / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    problems = {}
    if (out / "problems").exists():
        for path in sorted((out / "problems").glob("*.json")):
            record = json.loads(path.read_text())
            problems[record["identity"]] = record["problem"]
    expected = len(benchmark.all_pairs())
    summary: dict[str, Any] = {
        "benchmark": benchmark.name,
        "pairs": expected,
        "problems": problems,
        "methods": {},
    }
    for name in [NONE] + [m.name for m in methods]:
        mine = [r for r in rows if r["method"] == name]
        entry: dict[str, Any] = {
            "images_expected": expected,
            "images_scored": len(mine),
            "no_face": sum(1 for r in mine if r.get("face_found") is False),
            "reference_without_face": sum(1 for r in mine if r.get("ref_face_found") is False),
        }
        for key, _, _ in METRICS:
            values = [r[key] for r in mine if key in r]
            if values:
                mean, ci, n = mean_ci(values)
                entry[key] = {"mean": mean, "ci95": ci, "n": n}
        summary["methods"][name] = entry
    timings = (
        [json.loads(p.read_text()) for p in sorted((out / "timings").glob("*.json"))]
        if (out / "timings").exists()
        else []
    )
    summary["seconds_generating"] = sum(t["seconds_generating"] for t in timings)
    summary["seconds_scoring"] = sum(t["seconds_scoring"] for t in timings)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    if math.isnan(entry["ci95"]):
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ± {entry['ci95']:.3f}"


def markdown_table(summary: dict[str, Any], face_model: str | None = None) -> str:
    methods = summary["methods"]
    shown = [(k, title) for k, title, _ in METRICS if any(k in e for e in methods.values())]
    lines = [
        "| method | " + " | ".join(title for _, title in shown) + " | scored | no face |",
        "|---|" + "---|" * len(shown) + "---|---|",
    ]
    for name, entry in methods.items():
        cells = [_cell(entry.get(k)) for k, _ in shown]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {entry['images_scored']}/{entry['images_expected']} "
            f"| {entry['no_face']} |"
        )
    notes = [
        "",
        f"Benchmark `{summary['benchmark']}`, {summary['pairs']} (identity, prompt) pairs; ± is a 95% CI "
        "of the mean. FaceSim uses the largest detected face; images with no face are counted, not scored.",
    ]
    if face_model:
        notes.append(f"Face model: {face_model}.")
    for identity, why in summary["problems"].items():
        notes.append(f"- identity {identity} skipped: {why}")
    return "\n".join(lines + notes) + "\n"


def metric_plots(out: Path, summary: dict[str, Any], methods: Sequence[Method]) -> list[Path]:
    """One plot per metric: against id_weight (a line per mode and preset) when a sweep was run, else a bar
    per method with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Method]] = {}
    for m in methods:
        groups.setdefault(f"{m.mode} {m.preset}" if m.mode == "spatial" else m.mode, []).append(m)
    sweep = any(len({m.id_weight for m in g}) > 1 for g in groups.values())
    entries = summary["methods"]
    paths = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for key, title, _ in METRICS:
        names = [n for n in entries if key in entries[n]]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        if sweep:
            for label, group in groups.items():
                pts = sorted((m.id_weight, entries[m.name][key]) for m in group if key in entries[m.name])
                if pts:
                    means, cis = [e["mean"] for _, e in pts], [e["ci95"] for _, e in pts]
                    ax.errorbar([w for w, _ in pts], means, yerr=cis, marker="o", capsize=3, label=label)
            ax.set_xlabel("id_weight")
            ax.legend(fontsize=7)
        else:
            means = [entries[n][key]["mean"] for n in names]
            cis = [0.0 if math.isnan(entries[n][key]["ci95"]) else entries[n][key]["ci95"] for n in names]
            ax.bar(names, means, yerr=cis, capsize=3, color="#5b8def")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = out / "plots" / f"{key}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def html_grid(out: Path, benchmark: Benchmark, methods: Sequence[Method], limit: int = 200) -> Path:
    """index.html: per pair reference | no-id | each method (+ its mask strip); relative links, no network."""
    rows = []
    by_key = {}
    for row in iter_scores(out, benchmark, methods):
        by_key[(row["method"], row["identity"], row["prompt"], row["seed"])] = row
    names = [m.name for m in methods]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["reference", NONE, *names])
    for pair in benchmark.all_pairs()[:limit]:
        cells = [_img(out, pair.identity.path, "reference")]
        for name in [NONE, *names]:
            job = Job(name, pair)
            row = by_key.get((name, pair.identity.id, pair.prompt.id, pair.seed), {})
            caption = " ".join(f"{k} {row[k]:.2f}" for k in ("facesim", "clip_t") if k in row)
            cell = _img(out, out / job.image, caption)
            strip = mask_strip_path(out / job.image)
            if strip.exists():
                cell += f'<br><img class="strip" src="{html.escape(_rel(out, strip))}" alt="masks">'
            cells.append(cell)
        prompt = html.escape(pair.prompt.text[:160])
        rows.append(f'<tr><td class="p">{html.escape(pair.identity.id)}<br>{prompt}</td>'
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>idgen eval: {html.escape(benchmark.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; text-align: center; vertical-align: top; font-size: 12px; }}
td.p {{ max-width: 220px; text-align: left; }}
img {{ width: 128px; image-rendering: pixelated; }}
img.strip {{ width: 256px; }}
pre {{ background: #f6f6f6; padding: 8px; }}
</style></head><body>
<h1>idgen eval: {html.escape(benchmark.name)}</h1>
<pre>{html.escape(report)}</pre>
<table><tr><th>pair</th>{head}</tr>
{"".join(rows)}
</table>
<script>
// Marks images that failed to load, for checks in a headless browser.
window.addEventListener("load", () => {{
  const broken = [...document.images].filter((im) => !im.complete || im.naturalWidth === 0).length;
  document.body.dataset.brokenImages = String(broken);
}});
</script></body></html>
"""
    path = out / "index.html"
    atomic_write_text(path, page)
    return path


def _rel(out: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def _img(out: Path, path: Path, caption: str) -> str:
    if not path.exists():
        return "missing"
    return (
        f'<img src="{html.escape(_rel(out, path))}" alt="{html.escape(caption)}"><br>{html.escape(caption)}'
    )


def write_report(
    out: Path, benchmark: Benchmark, methods: Sequence[Method], face_model: str | None = None
) -> dict[str, Any]:
    """summary.json + results.jsonl + report.md + plots/ + index.html."""
    summary = collect(out, benchmark, methods)
    text = f"# idgen eval: {benchmark.name}\n\n" + markdown_table(summary, face_model)
    try:
        plots = metric_plots(out, summary, methods)
    except ImportError:
        plots = []
        text += "\nPlots skipped: matplotlib is not installed (pip install 'idgen[eval]').\n"
    text += "".join(f"\n![{p.stem}](plots/{p.name})\n" for p in plots)
    atomic_write_text(out / "report.md", text)
    html_grid(out, benchmark, methods)
    summary["plots"] = [str(p) for p in plots]
    return summary
