"""``lightning-eff bench``: the click command (the lead's cli.py adds it to the group)."""

from __future__ import annotations

import re

import click

from lightning_eff.errors import ConfigError

TASK_NAMES = ("vision", "lm", "finetune")


def parse_budget(text: str) -> int:
    """``--budget``: optimizer steps, written ``300`` or ``300steps``."""
    match = re.fullmatch(r"\s*(\d+)\s*(steps?)?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise click.BadParameter(f"{text!r}: give a number of optimizer steps, e.g. --budget 300 (or 300steps)")
    return int(match.group(1))


@click.group(name="bench", invoke_without_command=True)
@click.option("--recipe", "-r", default="quickstart", show_default=True, help="Shipped recipe name or YAML path.")
@click.option("--task", "-t", default="vision", show_default=True, help=f"Embedded task: {', '.join(TASK_NAMES)}.")
@click.option("--repeats", "-n", type=int, default=None, help="Baseline+recipe pairs (seeds seed, seed+1, ...). Default: the task's (3).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps per run, both arms. Default: the task's.")
@click.option("--budget", default=None, help="Same as --max-steps, e.g. 300 or 300steps.")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None,
    help="Budget in epochs instead of steps (max_epochs=N): techniques that shorten epochs (InfoBatch) then save steps. "
    "Evaluated at each epoch's end, or ceil(evals/epochs) times per epoch. Not with --max-steps/--budget.",
)
@click.option(
    "--recipe-steps", type=float, default=1.0, show_default=True,
    help="Recipe arm's steps as a multiple of the baseline's, for techniques that make steps cheaper but learn "
    "less per step (e.g. 2.0). Time to the baseline's quality still decides.",
)
@click.option("--evals", type=int, default=10, show_default=True, help="Evaluations per run (time-to-quality resolution).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--warmup-steps", type=int, default=5, show_default=True, help="Steps of one discarded run per arm before measuring.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None, help="Report folder. Default: bench-out/<task>-<recipe>.")
@click.option("--model", default=None, help="Your LightningModule: pkg.module:MyModule (with --data).")
@click.option("--data", default=None, help="Your LightningDataModule: pkg.module:MyDataModule (with --model).")
@click.option("--metric", default=None, help="Your task's logged validation metric (default val/loss).")
@click.option("--mode", type=click.Choice(["min", "max"]), default=None, help="Whether --metric improves downwards or upwards.")
@click.option("--label-noise", type=float, default=0.0, help="vision: fraction of training labels flipped.")
@click.option("--tolerance", type=float, default=0.0, show_default=True, help="Quality within this of the target counts as reached.")
@click.option("--logger", type=click.Choice(["none", "csv", "tensorboard", "wandb"]), default="none", show_default=True)
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator (cpu, gpu, auto).")
@click.option(
    "--flops", type=click.Choice(["separate", "inline", "off"]), default="separate", show_default=True,
    help="Count training FLOPs in an untimed second pass of each run (separate), inside the timed runs "
    "(inline: cheaper, but counting slows them), or not at all.",
)
@click.option("--quick", is_flag=True, help="Smoke run: a few steps, one repeat, no warm-up. Measures nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines or progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout instead of the table.")
@click.pass_context
def bench(ctx, recipe, task, repeats, max_steps, budget, epochs, recipe_steps, evals, seed, warmup_steps, out, model, data, metric, mode, label_noise, tolerance, logger, accelerator, flops, quick, quiet, as_json):
    """Time-to-quality: train a baseline and RECIPE on the same task and seeds, and compare.

    Writes results.json, quality plots and report.html into --out, and prints the table.
    `lightning-eff bench kernels` benchmarks the shared kernels instead.
    """
    if ctx.invoked_subcommand is not None:  # `bench kernels ...`: the sub-command does the work
        return
    from lightning_eff.bench.harness import run_bench
    from lightning_eff.bench.table import format_table

    if epochs is not None and (max_steps is not None or budget is not None):
        given = f"--max-steps {max_steps}" if max_steps is not None else f"--budget {budget}"
        raise click.UsageError(f"--epochs {epochs} and {given} are two budgets: give one")
    if budget is not None:
        steps = parse_budget(budget)
        if max_steps is not None and max_steps != steps:
            raise click.BadParameter(f"--budget {budget} and --max-steps {max_steps} disagree; give one")
        max_steps = steps
    if out is None:
        label = "custom" if model else task
        out = f"bench-out/{label}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(recipe).rsplit('/', 1)[-1].removesuffix('.yaml'))}"
    try:
        result = run_bench(
            task=task, recipe=recipe, repeats=repeats, max_steps=max_steps, evals=evals, seed=seed, out=out,
            label_noise=label_noise, model=model, data=data, metric=metric,
            higher_is_better=None if mode is None else mode == "max", tolerance=tolerance, logger=logger,
            accelerator=accelerator, quiet=quiet or as_json, warmup_steps=warmup_steps, recipe_steps=recipe_steps,
            epochs=epochs, flops=flops, quick=quick,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo(format_table(result))
    click.echo(f"report: {out}/{result.files['html']}  (data: {out}/{result.files['json']})")



@bench.command(name="kernels", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kernels(args) -> None:
    """Shared kernels vs. reference: correctness, and timings on a GPU (--out CSV, --repeats K)."""
    from lightning_eff.kernels.bench import main

    status = main(list(args))
    if status:
        raise SystemExit(status)


@bench.command(name="suite")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="bench-out/suite", show_default=True,
              help="One report folder per entry, and results.html.")
@click.option("--page", type=click.Path(dir_okay=False), default=None,
              help="Also write the Markdown results page here (the repository's is docs/results.md).")
@click.option("--only", multiple=True, help="Run only these entries (repeatable); default: all.")
@click.option("--repeats", "-n", type=click.IntRange(min=1), default=None, help="Repeats per entry (default: each task's).")
@click.option("--quick", is_flag=True, help="Smoke run of every entry: a few steps, one repeat. Measures nothing.")
def suite(out, page, only, repeats, quick) -> None:
    """Every shipped recipe on its regime's task, Lightning's own callbacks beside ours, and the pairs that
    claim to compose; one results page. A stopped suite continues where it stopped."""
    import os
    from pathlib import Path

    from lightning_eff.bench.suite import run_suite
    from lightning_eff.bench.suite_page import write_html, write_markdown

    command = "lightning-eff bench suite" + (" --quick" if quick else "") + "".join(f" --only '{o}'" for o in only)
    from lightning_eff.bench.suite import SuiteEntriesFailed

    failure = None
    try:
        rows = run_suite(out, only=only or None, quick=quick, repeats=repeats)
    except SuiteEntriesFailed as exc:  # the page still shows what ran; the command then fails
        rows, failure = exc.rows, exc
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not rows:
        raise click.ClickException(f"no suite entry ran: {failure}")
    html = write_html(rows, Path(out), command)
    written = [str(html)]
    if page:
        relative = os.path.relpath(Path(out).resolve(), Path(page).resolve().parent)
        written.append(str(write_markdown(rows, Path(page), command, link_prefix=f"{Path(relative).as_posix()}/")))
    written.append(str(write_markdown(rows, Path(out) / "results.md", command)))
    click.echo("results: " + ", ".join(written))
    if failure is not None:
        raise click.ClickException(f"{len(failure.failed)} entr{'y' if len(failure.failed) == 1 else 'ies'} failed: {failure}")
