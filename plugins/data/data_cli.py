"""``lightning-eff data score|dedup|filter``: offline data filters (added by the data plugin through
``leff_add_cli_commands``). Guide: docs/data-filters.md.

Every command reads JSON Lines, computes everything in memory, then writes its output atomically
(temporary file + rename): a corrupt or empty input, a bad option or an interruption leaves no output
file behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from lightning_eff.errors import LightningEffError

from . import dedup as dedup_math
from . import index_file, records, shingles, thresholds

#: seconds between plain progress lines when stderr is not a terminal (a log, CI, a pipe)
PROGRESS_EVERY_S = 5.0


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Expected failures become one-line click errors (exit status 1), not tracebacks."""
    try:
        yield
    except (records.InputError, index_file.IndexFileError, LightningEffError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except RecursionError:  # json.loads recurses: a record nested thousands deep
        raise click.ClickException(
            "a record nests JSON too deeply to read; records are flat objects holding a text field"
        ) from None
    except OSError as exc:  # an unwritable or impossible output path, a vanished input
        where = f": {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}: check that -o names a file in a folder you can write") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output(output: Path, *inputs: Path | None) -> None:
    """Before any work: refuse an output that would replace an input (``dedup X -o X`` used to
    replace the corpus with an index) or that cannot be created."""
    targets = [output, index_file.sidecar_path(output)] if output.suffix == ".npy" else [output]
    for target in targets:
        for source in inputs:
            if source is not None and _same_file(target, source):
                raise click.ClickException(
                    f"output {target} is the input {source}: writing it would replace your data; choose another -o"
                )
    if output.is_dir():
        raise click.ClickException(f"output {output} is a folder; give a file name (-o {output / 'out.json'})")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise click.ClickException(f"cannot create the output {output}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.ClickException(f"cannot write the output {output}: no permission to write in {folder}; choose another -o")


@contextlib.contextmanager
def _progress_lines(total: float, desc: str) -> Iterator[Any]:
    """A plain progress line on stderr every PROGRESS_EVERY_S seconds (no bar: not a terminal)."""
    start = last = time.monotonic()
    done = 0.0

    def tick(n: float = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            share = f" ({100 * done / total:.0f}%)" if total else ""
            click.echo(f"{desc}: {done:.0f}/{total:.0f}{share}, {now - start:.0f} s", err=True)

    yield tick


@contextlib.contextmanager
def _bar(show: bool | None, total: float, desc: str) -> Iterator[Any]:
    """A tqdm bar on a terminal (or with --progress); otherwise, unless --no-progress, progress lines
    every few seconds, so that a long run in a log or CI is never silent."""
    from tqdm import tqdm

    if show is None and not sys.stderr.isatty():
        with _progress_lines(total, desc) as tick:
            yield tick
        return
    with tqdm(total=total, desc=desc, disable=not show, file=sys.stderr, leave=False) as bar:
        yield bar.update


def _progress_option(f):
    return click.option(
        "--progress/--no-progress", default=None,
        help="Progress bars on stderr (default: a bar on a terminal, else a line every few seconds).",
    )(f)


def _input_meta(path: Path, n: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"input": str(path), "samples": n, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


@click.group(name="data")
def data() -> None:
    """Offline data filters: score (perplexity, IFD), dedup (exact, MinHash), filter (thresholds)."""


@data.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Scores file (.json).")
@click.option("--text-field", default="text", show_default=True, help="Record field holding the text.")
@click.option("--prompt-field", default="prompt", show_default=True, help="Instruction field (for IFD).")
@click.option("--response-field", default="response", show_default=True, help="Response field (for IFD).")
@click.option("--ifd/--no-ifd", default=None, help="IFD scores (default: when every record has prompt and response fields).")
@click.option("--model", "model_spec", default="byte", show_default=True,
              help="'byte': a tiny byte-level Llama trained on the input; 'pkg.mod:factory'; or a save_pretrained folder.")
@click.option("--train-steps", default=300, show_default=True, type=click.IntRange(min=0), help="Training steps of the 'byte' model.")
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=8), help="Width of the 'byte' model.")
@click.option("--max-len", default=256, show_default=True, type=click.IntRange(min=2), help="Tokens scored per text.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@_progress_option
def score(input_path, output, text_field, prompt_field, response_field, ifd, model_spec, train_steps, hidden, max_len, batch_size, seed, progress):
    """Per-sample perplexity (and IFD) of INPUT (JSONL) with a small reference LM."""
    from . import scoring  # imports torch: only this command needs it (`lightning-eff --help` stays fast)

    with _errors():
        _check_output(output, input_path)
        rows = records.read_jsonl(input_path)
        has_pairs = all(isinstance(r.get(prompt_field), str) and isinstance(r.get(response_field), str) for r in rows)
        if ifd and not has_pairs:
            raise records.InputError(f"{input_path}: --ifd needs string fields '{prompt_field}' and '{response_field}' in every record")
        ifd = has_pairs if ifd is None else ifd
        if all(isinstance(r.get(text_field), str) for r in rows) or not has_pairs:
            texts = records.field_values(rows, text_field, input_path)
        else:  # prompt/response data without a text field: the pair is the text
            texts = [f"{r[prompt_field]}\n{r[response_field]}" for r in rows]
        if model_spec == "byte":
            model = scoring.tiny_byte_lm(hidden=hidden, max_len=max(max_len, 128), seed=seed)
            with _bar(progress, train_steps, "training the reference LM") as tick:
                scoring.train_byte_lm(model, texts, steps=train_steps, seed=seed, progress=tick)
            lm = scoring.ReferenceLM(model)
        else:
            lm = scoring.load_reference_lm(model_spec)
        out: dict[str, list[float]] = {}
        with _bar(progress, len(texts), "perplexity") as tick:
            out["perplexity"] = scoring.perplexities(lm, texts, max_len, batch_size, tick)
        if ifd:
            with _bar(progress, len(rows), "IFD") as tick:
                out["ifd"], out["ppl_response_given_prompt"], out["ppl_response"] = scoring.ifd_scores(
                    lm, [r[prompt_field] for r in rows], [r[response_field] for r in rows], max_len, batch_size, tick
                )
        meta = _input_meta(input_path, len(rows), {
            "command": "score", "model": lm.name if model_spec != "byte" else f"byte-level llama hidden={hidden} steps={train_steps}",
            "max_len": max_len, "seed": seed, "text_field": text_field,
        })
        index_file.write_scores(output, out, meta)
    finite = [v for v in out["perplexity"] if not math.isnan(v)]
    click.echo(
        f"scored {len(rows)} samples: perplexity median {thresholds.quantile(finite, 0.5):.3g} "
        f"(p10 {thresholds.quantile(finite, 0.1):.3g}, p90 {thresholds.quantile(finite, 0.9):.3g})"
        + (", IFD computed" if ifd else "") + f" -> {output}"
    )


@data.command(name="dedup")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Index file (.json or .npy).")
@click.option("--text-field", default="text", show_default=True)
@click.option("--method", type=click.Choice(["exact", "minhash"]), default="minhash", show_default=True,
              help="exact: identical after normalisation; minhash: also near-duplicates.")
@click.option("--threshold", default=0.8, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True), help="Jaccard similarity that counts as a near-duplicate.")
@click.option("--num-perm", default=128, show_default=True, type=click.IntRange(min=8), help="MinHash permutations.")
@click.option("--ngram", default=5, show_default=True, type=click.IntRange(min=1), help="Shingle length.")
@click.option("--unit", type=click.Choice(["word", "char"]), default="word", show_default=True, help="Shingles of words or characters.")
@click.option("--seed", default=1, show_default=True, type=int, help="MinHash seed.")
@_progress_option
def dedup_command(input_path, output, text_field, method, threshold, num_perm, ngram, unit, seed, progress):
    """Remove exact and near-duplicate samples of INPUT (JSONL); keep the first of each cluster."""
    with _errors():
        _check_output(output, input_path)
        texts = records.field_values(records.read_jsonl(input_path), text_field, input_path)
        keys = [shingles.exact_key(t) for t in texts]
        sets = None
        if method == "minhash":
            with _bar(progress, len(texts), "shingling") as tick:
                sets = []
                for t in texts:
                    sets.append(shingles.shingles(t, unit, ngram))
                    tick(1)
        with _bar(progress, len(texts), "MinHash LSH") as tick:
            result = dedup_math.dedup(keys, sets, threshold=threshold, num_perm=num_perm, seed=seed, progress=tick)
        meta = _input_meta(input_path, len(texts), {
            "command": "dedup", "method": method, "threshold": threshold, "num_perm": num_perm,
            "ngram": ngram, "unit": unit, "seed": seed, "text_field": text_field,
            "exact_removed": result["exact_removed"], "near_removed": result["near_removed"],
        })
        index_file.write_index(output, result["kept"], len(texts), meta)
    click.echo(
        f"kept {len(result['kept'])} of {len(texts)} samples (exact duplicates removed: {result['exact_removed']}, "
        f"near duplicates removed: {result['near_removed']}) -> {output}"
    )


@data.command(name="filter")
@click.argument("scores_path", metavar="SCORES", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Index file (.json or .npy).")
@click.option("--key", default="perplexity", show_default=True, help="Which score of the scores file (perplexity, ifd, ...).")
@click.option("--min", "min_score", type=float, default=None, help="Keep scores >= this.")
@click.option("--max", "max_score", type=float, default=None, help="Keep scores <= this.")
@click.option("--min-quantile", type=click.FloatRange(0.0, 1.0), default=None, help="Keep scores >= this quantile.")
@click.option("--max-quantile", type=click.FloatRange(0.0, 1.0), default=None, help="Keep scores <= this quantile.")
@click.option("--within", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Only among the samples of this index file (e.g. the output of dedup); quantiles are over them.")
def filter_command(scores_path, output, key, min_score, max_score, min_quantile, max_quantile, within):
    """Keep the samples whose SCORES (from `data score`) lie within the given bounds."""
    with _errors():
        _check_output(output, scores_path, within)
        if min_score is None and max_score is None and min_quantile is None and max_quantile is None:
            raise click.UsageError("give at least one of --min, --max, --min-quantile, --max-quantile")
        all_scores, score_meta = index_file.read_scores(scores_path)
        if key not in all_scores:
            raise index_file.IndexFileError(f"{scores_path} has no '{key}' scores (it has: {', '.join(sorted(all_scores))})")
        values = all_scores[key]
        subset = None
        if within is not None:
            subset, total, _ = index_file.read_index(within)
            if total is not None and total != len(values):
                raise index_file.IndexFileError(f"{within} indexes {total} samples but {scores_path} scores {len(values)}")
        pool = values if subset is None else [values[i] for i in subset]
        low, high = thresholds.bounds(pool, min_score, max_score, min_quantile, max_quantile)
        kept = thresholds.keep_in_range(values, low, high, subset)
        meta = {
            "command": "filter", "scores": str(scores_path), "key": key, "low": low, "high": high,
            "within": None if within is None else str(within), "source": score_meta.get("input"),
            "samples": len(values), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        index_file.write_index(output, kept, len(values), meta)
    click.echo(f"kept {len(kept)} of {len(values) if subset is None else len(subset)} samples ({key} in [{low:.4g}, {high:.4g}]) -> {output}")
