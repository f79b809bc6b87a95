"""Collect scores into results.jsonl and summary.json; write the markdown table, plots and HTML grid."""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from idgen.eval.folder import Job, json_records, mask_strip_path
from idgen.eval.manifest import Benchmark
from idgen.eval.metrics import mean_ci, registered
from idgen.eval.runner import Method, iter_scores, read_problems
from idgen.io import atomic_output, atomic_write_text
from idgen.pipelines.names import NONE, SPATIAL


def metrics_table() -> tuple[tuple[str, str, bool], ...]:
    """(key, column title, higher is better?) of every registered metric, in report order."""
    return tuple((m.key, m.title, m.higher_is_better) for m in registered())


def _metric_entry(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [r[key] for r in rows if key in r]
    reasons = Counter(r["skipped"][key] for r in rows if key in r.get("skipped", {}))
    mean, ci, n = mean_ci(values)
    return {"mean": mean, "ci95": ci, "n": n, "skipped": dict(sorted(reasons.items()))}


def _method_entry(rows: list[dict[str, Any]], expected: int, computed: list[str]) -> dict[str, Any]:
    checked = any("face_found" in r for r in rows)  # None: no face model ran, so nothing was counted
    entry: dict[str, Any] = {
        "images_expected": expected,
        "images_scored": len(rows),
        "no_face": sum(1 for r in rows if r.get("face_found") is False) if checked else None,
        "reference_without_face": sum(1 for r in rows if r.get("ref_face_found") is False)
        if checked
        else None,
    }
    for key in computed:
        entry[key] = _metric_entry(rows, key)
    return entry


def read_metric_record(out: Path) -> dict[str, Any]:
    """metrics.json (what scoring recorded: per metric the model used, or why not computed)."""
    path = out / "metrics.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    for key, _, _ in metrics_table():
        record.setdefault(key, {"computed": False, "reason": "not scored yet (no scoring pass has run)"})
    return record


def _face_checked(rows: list[dict[str, Any]]) -> list[str] | None:
    """Ids of the photos without a face; None when no face model ran (nothing was checked)."""
    if not any("ref_face_found" in r for r in rows):
        return None
    return sorted({r["identity"] for r in rows if r.get("ref_face_found") is False})


def _inputs(benchmark: Benchmark) -> dict[str, Any]:
    return {
        "benchmark": benchmark.name,
        "photos": len(benchmark.identities),
        "prompts": len(benchmark.prompts),
        "identities": {i.id: i.path.name for i in benchmark.identities},
        "limited_from": list(benchmark.limited_from) if benchmark.limited_from else None,
        "pairs": len(benchmark.all_pairs()),
        "ignored_files": dict(benchmark.ignored),
    }


def collect(out: Path, benchmark: Benchmark, methods: Sequence[Method]) -> dict[str, Any]:
    """results.jsonl (a row per scored image, plan order) and summary.json (per method: mean, CI, counts)."""
    rows = list(iter_scores(out, benchmark, methods))
    with atomic_output(out / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    metrics = read_metric_record(out)
    computed = [k for k, _, _ in metrics_table() if metrics[k]["computed"]]
    expected = len(benchmark.all_pairs())
    summary: dict[str, Any] = {
        **_inputs(benchmark),
        "problems": read_problems(out),
        "photos_without_face": _face_checked(rows),
        "metrics": metrics,
        "methods": {
            name: _method_entry([r for r in rows if r["method"] == name], expected, computed)
            for name in [NONE] + [m.name for m in methods]
        },
    }
    timings = [json.loads(p.read_text()) for p in json_records(out / "timings")]
    summary["seconds_generating"] = sum(t["seconds_generating"] for t in timings)
    summary["seconds_scoring"] = sum(t["seconds_scoring"] for t in timings)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def md(text: Any) -> str:
    """Text safe in a markdown table cell: no raw HTML, no cell breaks, no newlines."""
    escaped = html.escape(str(text), quote=False).replace("|", "\\|")
    return " ".join(escaped.split())


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["n"] == 0:
        return "–"
    if math.isnan(entry["ci95"]):
        return f"{entry['mean']:.3f} (n {entry['n']})"
    return f"{entry['mean']:.3f} ± {entry['ci95']:.3f} (n {entry['n']})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _results_table(summary: dict[str, Any]) -> list[str]:
    methods = summary["methods"]
    shown = [(k, t) for k, t, _ in metrics_table() if summary["metrics"][k]["computed"]]
    header = ["method", *(md(t) for _, t in shown), "scored", "no face"]
    rows = [
        [md(name), *(_cell(e.get(k)) for k, _ in shown), f"{e['images_scored']}/{e['images_expected']}",
         "–" if e["no_face"] is None else str(e["no_face"])]
        for name, e in methods.items()
    ]  # fmt: skip
    return _table(header, rows)


def _metrics_section(summary: dict[str, Any]) -> list[str]:
    """Per metric: the model actually used (or "not computed: why"), n and skipped per method, and why."""
    names = list(summary["methods"])
    rows, reasons = [], []
    for key, title, higher in metrics_table():
        record = summary["metrics"][key]
        if not record["computed"]:
            rows.append([md(title), md(f"not computed: {record['reason']}"), *["–"] * len(names)])
            continue
        counts = []
        for name in names:
            e = summary["methods"][name][key]
            skipped = sum(e["skipped"].values())
            counts.append(f"{e['n']} / {skipped}")
            reasons += [
                f"- {md(title)}, {md(name)}: {c} skipped, {md(why)}" for why, c in e["skipped"].items()
            ]
        arrow = "higher is better" if higher else "lower is better"
        rows.append([md(title), md(f"{record['model']} ({arrow})"), *counts])
    lines = ["", "## Metrics", "", "n / skipped per method; the model is the one actually used.", ""]
    lines += _table(["metric", "model", *(md(n) for n in names)], rows)
    return lines + (["", *reasons] if reasons else [])


def _inputs_section(summary: dict[str, Any]) -> list[str]:
    lines = ["", "## Inputs", ""]
    lines.append(f"- {summary['photos']} photos x {summary['prompts']} prompts = {summary['pairs']} pairs.")
    if summary["limited_from"]:
        photos, prompts = summary["limited_from"]
        lines.append(f"- A subset (--limit-photos/--limit-prompts) of {photos} photos and {prompts} prompts.")
    used = ", ".join(f"{md(i)} ({md(name)})" for i, name in summary["identities"].items())
    lines.append(f"- Photos used (id, file): {used}.")
    missing = summary["photos_without_face"]
    if missing is None:
        lines.append("- Photos and images without a face: not checked (no face model).")
    else:
        lines.append(
            f"- Photos without a face: {len(missing)}"
            + (f" ({', '.join(md(i) for i in missing)})." if missing else ".")
        )
        no_face = ", ".join(f"{md(n)} {e['no_face']}" for n, e in summary["methods"].items())
        lines.append(f"- Images without a face: {no_face} (counted, not scored by face metrics).")
    for identity, why in summary["problems"].items():
        lines.append(f"- Photo {md(identity)} skipped: {md(why)}")
    for name, why in summary["ignored_files"].items():
        lines.append(f"- File {md(name)} not used as an identity: {md(why)}")
    return lines


def markdown_table(summary: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
    lines = _results_table(summary)
    lines += [
        "",
        f"Benchmark `{md(summary['benchmark'])}`; ± is the 95% CI of the mean (Student's t), n the images "
        "with a value. Face metrics use the largest detected face.",
    ]
    if settings:
        lines.append(f"Settings: {md(json.dumps(settings, sort_keys=True))}")
    lines += _metrics_section(summary) + _inputs_section(summary)
    return "\n".join(lines) + "\n"


def _method_groups(methods: Sequence[Method]) -> dict[str, list[Method]]:
    """Methods by mode (and preset, for spatial): the lines of an id_weight sweep."""
    groups: dict[str, list[Method]] = {}
    for m in methods:
        groups.setdefault(f"{m.mode} {m.preset}" if m.mode == SPATIAL and m.preset else m.mode, []).append(m)
    return groups


def _sweep_plot(
    ax: Any, groups: dict[str, list[Method]], entries: dict[str, Any], key: str, names: list[str]
) -> None:
    for label, group in groups.items():
        pts = sorted(
            ((m.id_weight, entries[m.name][key]) for m in group if m.name in names), key=lambda p: p[0]
        )
        if pts:
            means, cis = [e["mean"] for _, e in pts], [e["ci95"] for _, e in pts]
            ax.errorbar([w for w, _ in pts], means, yerr=cis, marker="o", capsize=3, label=label)
    ax.set_xlabel("id_weight")
    ax.legend(fontsize=7)


def _bar_plot(ax: Any, entries: dict[str, Any], key: str, names: list[str]) -> None:
    means = [entries[n][key]["mean"] for n in names]
    cis = [0.0 if math.isnan(entries[n][key]["ci95"]) else entries[n][key]["ci95"] for n in names]
    ax.bar(names, means, yerr=cis, capsize=3, color="#5b8def")


def metric_plots(out: Path, summary: dict[str, Any], methods: Sequence[Method]) -> list[Path]:
    """One plot per metric with values: against id_weight (a line per mode and preset) when a sweep was
    run, else a bar per method with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _method_groups(methods)
    sweep = any(len({m.id_weight for m in g}) > 1 for g in groups.values())
    entries = summary["methods"]
    paths = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for key, title, _ in metrics_table():
        names = [n for n in entries if entries[n].get(key, {}).get("n", 0) > 0]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        _sweep_plot(ax, groups, entries, key, names) if sweep else _bar_plot(ax, entries, key, names)
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
    """A relative, URL-quoted link from the run folder (so # and ? in names stay part of the path)."""
    return quote(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix())


def _img(out: Path, path: Path, caption: str) -> str:
    if not path.exists():
        return "missing"
    return (
        f'<img src="{html.escape(_rel(out, path))}" alt="{html.escape(caption)}"><br>{html.escape(caption)}'
    )


def write_report(out: Path, benchmark: Benchmark, methods: Sequence[Method]) -> dict[str, Any]:
    """summary.json + results.jsonl + report.md + plots/ + index.html."""
    summary = collect(out, benchmark, methods)
    plan = out / "plan.json"
    settings = json.loads(plan.read_text()).get("generation") if plan.is_file() else None
    text = f"# idgen eval: {md(benchmark.name)}\n\n" + markdown_table(summary, settings)
    try:
        plots = metric_plots(out, summary, methods)
    except ImportError:
        plots = []
        text += "\nPlots skipped: matplotlib is not installed (pip install 'idgen[eval]').\n"
    text += "".join(f"\n![{p.stem}](plots/{p.name})\n" for p in plots)
    atomic_write_text(out / "report.md", text)
    html_grid(out, benchmark, methods)
    summary["plots"] = [p.relative_to(out).as_posix() for p in plots]
    return summary
