"""``lightning-eff bench suite``: every entry of :mod:`suite_entries` through ``run_bench``, one report
folder each, then one results page (Markdown + HTML with plots) over all of them.

A suite stopped midway continues where it stopped: an entry whose ``results.json`` exists (and was
made with the same settings, on the task as it is built now) is read back instead of run again.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_eff.bench.suite_entries import ENTRIES, SuiteEntry, entry_folder
from lightning_eff.errors import ConfigError, LightningEffError

#: budget options ``--quick`` replaces by the task's quick size (``run_bench(quick=True)``)
BUDGET_OPTIONS = ("max_steps", "epochs", "recipe_steps")
SETTINGS_FILE = "suite-settings.json"


@dataclass(frozen=True)
class SuiteRow:
    entry: SuiteEntry
    folder: str
    result: Any  # BenchResult
    ran_now: bool


class SuiteEntriesFailed(LightningEffError):
    """Some entries failed before training (their errors); ``rows`` holds the ones that ran."""

    def __init__(self, rows: list[SuiteRow], failed: list[tuple[SuiteEntry, str]]) -> None:
        self.rows, self.failed = rows, failed
        super().__init__("; ".join(f"{entry.name}: {error.splitlines()[-1].strip()}" for entry, error in failed))


def select_entries(only: Sequence[str] | None) -> list[SuiteEntry]:
    if not only:
        return list(ENTRIES)
    by_name = {e.name: e for e in ENTRIES}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown suite entries {unknown}; the suite has: {', '.join(by_name)}")
    return [by_name[n] for n in only]


def entry_recipe(entry: SuiteEntry) -> Any:
    """A shipped recipe's name as it is; an inline mapping as a Recipe named after the entry."""
    if isinstance(entry.recipe, str):
        return entry.recipe
    from lightning_eff.recipe import recipe_from_dict

    return recipe_from_dict(entry.recipe, name=entry_folder(entry.name), source=f"suite entry '{entry.name}'")


def bench_options(entry: SuiteEntry, quick: bool, repeats: int | None) -> dict[str, Any]:
    options = dict(entry.options)
    if quick:
        options = {k: v for k, v in options.items() if k not in BUDGET_OPTIONS} | {"quick": True}
    if repeats is not None:
        options["repeats"] = repeats
    return options


@functools.cache
def task_fingerprint(task: str, label_noise: float | None = None) -> tuple[str, int]:
    """The task as it is built now: its details (data sizes, model, sequence length...) as JSON, and
    its model's parameter count."""
    from lightning_eff.bench.tasks import get_task

    bench_task = get_task(task, label_noise=label_noise)
    parameters = sum(p.numel() for p in bench_task.make_module().parameters())
    return json.dumps(bench_task.details, sort_keys=True), parameters


def _measured_the_task_as_built_now(result: Any, entry: SuiteEntry, options: dict[str, Any]) -> bool:
    """Whether ``result`` was measured on the task as it is built now: a result of an earlier size of
    the task (a resized model, a longer sequence) must be run again, not kept beside the new ones."""
    details, parameters = task_fingerprint(entry.task, options.get("label_noise"))
    baseline = {run.parameters for run in result.runs if run.arm == "baseline"}
    return json.dumps(result.task.details, sort_keys=True) == details and baseline == {parameters}


def _settings(entry: SuiteEntry, options: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": entry.recipe, "task": entry.task, "options": options}


def _finished(folder: Path, entry: SuiteEntry, options: dict[str, Any]) -> Any | None:
    """The entry's result if it finished earlier with the same settings on the same task, else None."""
    from lightning_eff.bench.report import load_result

    try:
        same = json.loads((folder / SETTINGS_FILE).read_text()) == json.loads(json.dumps(_settings(entry, options)))
        result = load_result(folder / "results.json") if same else None
    except (OSError, ValueError):
        return None
    return result if result is not None and _measured_the_task_as_built_now(result, entry, options) else None


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_suite(
    out: str | Path,
    *,
    only: Sequence[str] | None = None,
    quick: bool = False,
    repeats: int | None = None,
    say: Callable[[str], None] | None = None,
    run: Callable[..., Any] | None = None,
) -> list[SuiteRow]:
    """Run (or read back) each selected entry into ``out/<entry>/``; returns the rows in suite order.

    ``run`` is ``run_bench`` (replaceable in tests).
    """
    if run is None:
        from lightning_eff.bench.harness import run_bench as run
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    entries = select_entries(only)
    out = Path(out)
    rows: list[SuiteRow] = []
    failed: list[tuple[SuiteEntry, str]] = []
    spent: list[float] = []
    for i, entry in enumerate(entries, 1):
        folder = out / entry_folder(entry.name)
        options = bench_options(entry, quick, repeats)
        settings = _settings(entry, options)
        kept = _kept_row(entry, out, quick, repeats)
        if kept is not None:
            say(f"[{i}/{len(entries)}] {entry.name}: done earlier ({kept.result.summary.verdict}), kept")
            rows.append(kept)
            continue
        left = len(entries) - i + 1
        eta = _duration(sum(spent) / len(spent) * left) if spent else "after the first entry"
        say(f"[{i}/{len(entries)}] {entry.name}: {entry.task}, {entry.regime or entry.kind} | ETA {eta}")
        start = time.perf_counter()
        try:
            result = run(task=entry.task, recipe=entry_recipe(entry), out=folder, quiet=True, **options)
        except LightningEffError as exc:  # one entry's bad configuration must not stop the others
            say(f"        {entry.name}: FAILED: {exc}")
            failed.append((entry, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a peer callback crashing mid-run is a result, not the suite's end
            say(f"        {entry.name}: CRASHED: {type(exc).__name__}: {exc}")
            failed.append((entry, f"crashed: {type(exc).__name__}: {exc}"))
            continue
        spent.append(time.perf_counter() - start)
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        say(f"        {entry.name}: {result.summary.verdict}; compute: {result.summary.compute_verdict}")
        rows.append(SuiteRow(entry, folder.name, result, ran_now=True))
    if only:
        rows = _with_kept_rows(rows, out, quick, repeats)
    if failed:
        raise SuiteEntriesFailed(rows, failed)
    return rows


def _with_kept_rows(rows: list[SuiteRow], out: Path, quick: bool, repeats: int | None) -> list[SuiteRow]:
    """``rows`` plus the entries not selected that finished earlier with the same settings, in suite
    order: re-running some entries keeps the others on the results page."""
    by_name = {row.entry.name: row for row in rows}
    merged = [by_name.get(entry.name) or _kept_row(entry, out, quick, repeats) for entry in select_entries(None)]
    return [row for row in merged if row is not None]


def _kept_row(entry: SuiteEntry, out: Path, quick: bool, repeats: int | None) -> SuiteRow | None:
    """The entry's row read back from ``out`` if it finished earlier with the same settings, on the
    task as it is built now."""
    folder = out / entry_folder(entry.name)
    done = _finished(folder, entry, bench_options(entry, quick, repeats))
    return None if done is None else SuiteRow(entry, folder.name, done, ran_now=False)
