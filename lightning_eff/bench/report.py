"""Write a benchmark's files: ``results.json`` (+ its JSON schema), PNG plots, ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_eff.bench.html import render_html
from lightning_eff.bench.plots import caption, plot_curves, plotted_runs
from lightning_eff.bench.schema import BenchResult

FILES = {
    "json": "results.json",
    "schema": "results.schema.json",
    "plot_time": "quality_vs_time.png",
    "plot_flops": "quality_vs_flops.png",
    "plot_step": "quality_vs_step.png",
    "html": "report.html",
}


def write_report(result: BenchResult, out: Path) -> BenchResult:
    """Write every file into ``out`` and return the result with ``files`` filled in."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    axes = {"plot_time": "train_seconds", "plot_flops": "flops", "plot_step": "step"}
    if not plotted_runs(result, "flops"):  # FLOPs not counted: no compute plot
        del axes["plot_flops"]
    files = {k: v for k, v in FILES.items() if not k.startswith("plot_") or k in axes}
    result = result.model_copy(update={"files": files})
    images = [(plot_curves(result, x, out / files[key]), caption(result, x)) for key, x in axes.items()]
    (out / FILES["schema"]).write_text(json.dumps(BenchResult.model_json_schema(), indent=2))
    (out / FILES["json"]).write_text(result.model_dump_json(indent=2))
    (out / FILES["html"]).write_text(render_html(result, images))
    return result


def load_result(path: str | Path) -> BenchResult:
    """Read and validate a ``results.json``."""
    return BenchResult.model_validate_json(Path(path).read_text())
