"""``report.html``: one self-contained file (inline CSS, plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

from lightning_eff.bench.noise import noisy_runs
from lightning_eff.bench.schema import BenchResult
from lightning_eff.bench.table import fmt, fmt_flops, steps_label, table_rows, verdict_line

CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:bold;padding:.5em;background:#f6f6e8}.warn{color:#a33}code{background:#f3f3f3;padding:2px 4px}
img{max-width:100%}.caption{font-size:13px;color:#555;margin-top:0}
"""


def text(value: str) -> str:
    """Escaped text with markdown-style `code` spans as <code> (method strings are written that way)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(value))


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i >= numeric_from else ''}>{escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, note: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{escape(path.stem)}" src="data:image/png;base64,{data}"></p><p class="caption">{text(note)}</p>'


def _flops(value: int | None) -> str:
    return "-" if value is None else fmt_flops(value)


def _batch_ms(run) -> str:
    t = run.batch_times
    return "-" if t is None else f"{t.median * 1e3:.1f} / {t.p90 * 1e3:.1f}"


def _budget(task) -> str:
    if task.budget == "epochs":
        return f"budget: {task.max_epochs} epochs (max_epochs, max_steps=-1), evaluated {task.evals_per_epoch}x per epoch"
    return f"budget: {steps_label(task)} (max_steps), evaluated every {task.eval_every}"


def render_html(result: BenchResult, images: list[tuple[Path, str]]) -> str:
    """``images``: (PNG, caption) pairs, embedded in order."""
    env, task, recipe = result.environment, result.task, result.recipe
    summary = _table(
        ["", "baseline (median)", "recipe (median)", "recipe / baseline: min / median / max"],
        [[r.label, r.baseline, r.recipe, r.ratio] for r in table_rows(result)],
    )
    noisy = noisy_runs(result.runs)
    per_run = _table(
        ["arm", "seed", "timing", "steps", "epochs", "train s", "wall s", "final quality", "time to quality s", "FLOPs",
         "FLOPs to quality", "batch ms median / p90", "samples/s", "peak MB", "sparsity", "frozen"],
        [
            [
                r.arm, str(r.seed), "noisy (see warnings)" if (r.arm, r.seed) in noisy else "ok", str(r.steps), str(r.epochs), fmt(r.train_seconds, "seconds"), fmt(r.wall_seconds, "seconds"),
                fmt(r.final_quality, "quality"),
                fmt(r.time_to_quality, "seconds") if r.time_to_quality is not None else "did not reach",
                _flops(r.flops), _flops(r.flops_to_quality) if r.time_to_quality is not None else "did not reach",
                _batch_ms(r), fmt(r.samples_per_second, "rate"), fmt(r.peak_memory_mb, "rate"), fmt(r.sparsity, "fraction"),
                fmt(r.frozen_fraction, "fraction"),
            ]
            for r in result.runs
        ],
        numeric_from=3,
    )
    techniques = "".join(f"<li><code>{escape(t)}</code></li>" for t in recipe.techniques) or "<li>(none)</li>"
    warnings = "".join(f'<li class="warn">{text(w)}</li>' for w in result.warnings)
    versions = ", ".join(f"{k} {v}" for k, v in env.versions.items())
    m = result.method
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lightning-eff bench: {escape(task.name)} / {escape(recipe.name)}</title>
<style>{CSS}</style></head><body>
<h1>lightning-eff bench: {escape(task.name)}, recipe {escape(recipe.name)}</h1>
<p class="verdict">{escape(verdict_line(result))}</p>
{summary}
{f"<ul>{warnings}</ul>" if warnings else ""}
<h2>Curves</h2>
{"".join(_image(p, note) for p, note in images)}
<h2>Runs</h2>
{per_run}
<h2>Method</h2>
<ul><li>Task: {text(task.description)}; quality = <code>{escape(task.metric)}</code> on a held-out split,
{"higher" if task.higher_is_better else "lower"} is better.</li>
<li>{escape(_budget(task))}.</li>
<li>Recipe <code>{escape(recipe.name)}</code> ({text(recipe.description)}):<ul>{techniques}</ul></li>
<li>Repeats: {m.repeats}, seeds {escape(str(m.seeds))}; order: {text(m.order)}.</li>
<li>Time to quality: {text(m.time_to_quality)}{f"; tolerance {m.tolerance}" if m.tolerance else ""}.</li>
<li>Training FLOPs: {text(m.flops)}.</li>
<li>Noisy timing: {text(m.noise)}.</li>
<li>Optimizer and schedule: {text(m.schedule)}.</li></ul>
<h2>Reproduce</h2>
<p><code>{escape(env.command)}</code></p>
<p>{escape(env.date)}; {escape(env.platform)}, {env.cpu_count} CPUs ({env.torch_threads} torch threads), device {escape(env.device)};
Python {escape(env.python)}; {escape(versions)}.</p>
</body></html>
"""
