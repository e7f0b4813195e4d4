"""Offline filters: the pure math (shingles, clustering, thresholds, NLL masks), the index files, the
data-module wrapper, and `lightning-eff data score|dedup|filter` through click's CliRunner."""

import json
import math
import os
import re
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lightning_eff.plugins.data import (
    FilteredDataModule,
    IndexFilteredDataset,
    filtered_datamodule,
    index_file,
    scoring,
    shingles,
    thresholds,
)
from lightning_eff.plugins.data import dedup as dd
from lightning_eff.plugins.data.records import InputError, read_jsonl
from lightning_eff.testing import TinyDataModule

# --- shingles and clustering ----------------------------------------------------------------------


def test_normalisation_makes_case_and_spacing_variants_exact_duplicates():
    assert shingles.exact_key("Hello   World\n") == shingles.exact_key("hello world")
    assert shingles.exact_key("hello world") != shingles.exact_key("hello, world")
    assert shingles.exact_key("A  b", normalize=False) != shingles.exact_key("a b", normalize=False)


def test_shingles_of_words_and_characters():
    assert shingles.word_shingles("a b c d", 2) == {"a b", "b c", "c d"}
    assert shingles.word_shingles("a b", 5) == {"a b"}
    assert shingles.word_shingles("   ", 3) == set()
    assert shingles.char_shingles("abcd", 3) == {"abc", "bcd"}
    assert shingles.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)


def test_clusters_are_transitive_and_keep_the_first_member():
    ids = dd.clusters(6, [(4, 2), (2, 5), (0, 1)])
    assert ids == [0, 0, 2, 3, 2, 2]
    assert dd.kept_indices(ids) == [0, 2, 3]
    assert dd.exact_duplicate_pairs(["x", "y", "x", "x"]) == [(0, 2), (0, 3)]


def _doc(seed, words=60):
    g = np.random.default_rng(seed)
    return " ".join(f"w{int(i)}" for i in g.integers(0, 5000, words))


def test_minhash_finds_near_duplicates_and_spares_distinct_texts():
    base = _doc(0)
    near = base.replace(base.split()[30], "changed", 1)  # one word of 60 differs
    texts = [base, _doc(1), near, _doc(2), base.upper()]
    keys = [shingles.exact_key(t) for t in texts]
    sets = [shingles.word_shingles(t, 3) for t in texts]
    result = dd.dedup(keys, sets, threshold=0.7, num_perm=128)
    assert result["kept"] == [0, 1, 3]
    assert result["exact_removed"] == 1 and result["near_removed"] == 1
    assert result["cluster"][2] == result["cluster"][4] == 0
    exact_only = dd.dedup(keys, None)
    assert exact_only["kept"] == [0, 1, 2, 3] and exact_only["near_removed"] == 0


# --- thresholds -----------------------------------------------------------------------------------


def test_quantile_matches_numpy_and_ignores_nan():
    values = [3.0, 1.0, float("nan"), 10.0, 4.0, 7.5]
    finite = [v for v in values if not math.isnan(v)]
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert thresholds.quantile(values, q) == pytest.approx(float(np.quantile(finite, q)))


def test_bounds_take_the_tighter_of_value_and_quantile_and_never_keep_nan():
    scores = [1.0, 2.0, 3.0, 4.0, float("nan"), 100.0]
    low, high = thresholds.bounds(scores, min_score=1.5, max_quantile=0.75)
    assert (low, high) == (1.5, 4.0)
    assert thresholds.keep_in_range(scores, low, high) == [1, 2, 3]
    assert thresholds.keep_in_range(scores, -math.inf, math.inf, within=[5, 4, 0]) == [0, 5]


# --- scoring --------------------------------------------------------------------------------------


class Bigram(torch.nn.Module):
    """A causal LM whose logits depend on the current token only (easy to check by hand)."""

    def __init__(self, vocab=scoring.BYTE_VOCAB):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return self.table[input_ids]


def test_mean_nll_scores_only_the_tokens_from_start_and_ignores_padding():
    model = Bigram()
    seqs = [[256, 10, 20, 30], [256, 5]]
    got = scoring.mean_nll(model, seqs, starts=[2, 1], batch_size=2)
    logp = torch.log_softmax(model.table.detach(), -1)
    want0 = -(logp[10, 20] + logp[20, 30]) / 2
    want1 = -logp[256, 5]
    assert got[0] == pytest.approx(float(want0), rel=1e-5) and got[1] == pytest.approx(float(want1), rel=1e-5)
    assert math.isnan(scoring.mean_nll(model, [[256]], [1])[0])


def test_ifd_is_the_ratio_of_conditional_and_plain_response_perplexity():
    lm = scoring.ReferenceLM(Bigram())
    ifd, cond, plain = scoring.ifd_scores(lm, ["question"], ["answer"])
    assert ifd[0] == pytest.approx(cond[0] / plain[0], rel=1e-5)
    # a bigram model only sees the previous token: the prompt changes the first response token only
    assert cond[0] != plain[0]


# --- index files and the data-module wrapper ------------------------------------------------------


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        index_file.atomic_write(target, broken)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".json", ".npy"])
def test_index_round_trip_and_filtered_datamodule(tmp_path, suffix):
    path = tmp_path / f"kept{suffix}"
    index_file.write_index(path, list(range(0, 64, 2)), 64, {"why": "test"})
    kept, total, meta = index_file.read_index(path)
    assert kept == list(range(0, 64, 2)) and total == 64 and meta == {"why": "test"}
    data = filtered_datamodule(TinyDataModule(), path)
    assert isinstance(data, FilteredDataModule)
    loader = data.train_dataloader()
    assert len(loader.dataset) == 32 and loader.batch_size == 8
    x, y = loader.dataset[1]
    assert torch.equal(x, TinyDataModule().x[2])
    assert data.steps_per_epoch == 8  # other attributes are the wrapped module's


def test_index_for_another_dataset_is_refused(tmp_path):
    path = tmp_path / "kept.json"
    index_file.write_index(path, [0, 1], 10, {})
    with pytest.raises(index_file.IndexFileError, match="written for 10 samples but the dataset has 64"):
        IndexFilteredDataset(TinyDataModule().train_dataloader().dataset, path)
    (tmp_path / "junk.json").write_text('{"kept": [1]}')
    with pytest.raises(index_file.IndexFileError, match="not a lightning-eff index file"):
        index_file.read_index(tmp_path / "junk.json")


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    """A fresh root group with the data plugin's commands, added through its leff_add_cli_commands."""
    from lightning_eff.plugins import data as data_plugin

    root = click.Group("lightning-eff")
    data_plugin.leff_add_cli_commands(cli=root)
    return root


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_plugin_registers_the_data_group_through_the_hook():
    from lightning_eff.registry import get_registry

    root = click.Group("root")
    for impl in get_registry().pm.hook.leff_add_cli_commands.get_hookimpls():
        impl.function(cli=root)
    assert {"score", "dedup", "filter"} <= set(root.commands["data"].commands)


def test_dedup_command_writes_an_index_of_the_first_of_each_cluster(cli, tmp_path):
    base = _doc(0)
    rows = [{"text": base}, {"text": _doc(1)}, {"text": base.replace(base.split()[10], "x")}, {"text": base.upper()}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "kept.json"
    result = CliRunner().invoke(cli, ["data", "dedup", str(src), "-o", str(out), "--threshold", "0.7", "--ngram", "3"])
    assert result.exit_code == 0, result.output
    assert "kept 2 of 4 samples (exact duplicates removed: 1, near duplicates removed: 1)" in result.output
    data = json.loads(out.read_text())
    assert data["kept"] == [0, 1] and data["total"] == 4 and data["meta"]["method"] == "minhash"
    result = CliRunner().invoke(cli, ["data", "dedup", str(src), "-o", str(tmp_path / "e.npy"), "--method", "exact"])
    assert result.exit_code == 0 and index_file.read_index(tmp_path / "e.npy")[0] == [0, 1, 2]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "a"}\n{broken\n', "line 2 is not valid JSON"),
        ("", "holds no records (empty input)"),
        ("\n\n", "holds no records (empty input)"),
        ('{"text": "a"}\n[1, 2]\n', "line 2 is a JSON list, not an object"),
        ('{"body": "a"}\n', "record 1 has no text field 'text' (missing; its keys: body)"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    ],
)
def test_corrupt_or_empty_input_is_a_clear_error_and_writes_nothing(cli, tmp_path, content, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (["dedup"], ["score", "--train-steps", "1"]):
        out = tmp_path / "out.json"
        result = CliRunner().invoke(cli, ["data", *command, str(src), "-o", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert not out.exists() and sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_score_then_filter_drops_junk_text(cli, tmp_path):
    words = "the model reads the text and the text is about the model and the data".split()
    g = np.random.default_rng(0)
    rows = [{"text": " ".join(g.choice(words, 12)), "prompt": "repeat", "response": " ".join(g.choice(words, 6))} for _ in range(24)]
    junk = [{"text": "".join(chr(c) for c in g.integers(33, 127, 60)), "prompt": "repeat", "response": "zq#"} for _ in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows + junk)
    scores = tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli, ["data", "score", str(src), "-o", str(scores), "--train-steps", "60", "--hidden", "32", "--max-len", "64", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "scored 27 samples" in result.output and "IFD computed" in result.output
    table, meta = index_file.read_scores(scores)
    assert set(table) == {"perplexity", "ifd", "ppl_response_given_prompt", "ppl_response"}
    assert all(len(v) == 27 for v in table.values()) and meta["samples"] == 27
    ppl = table["perplexity"]
    assert min(ppl[24:]) > max(ppl[:24])  # junk is the least typical text
    kept = tmp_path / "kept.json"
    result = CliRunner().invoke(cli, ["data", "filter", str(scores), "-o", str(kept), "--max-quantile", "0.85"])
    assert result.exit_code == 0, result.output
    assert set(index_file.read_index(kept)[0]).isdisjoint({24, 25, 26})
    result = CliRunner().invoke(cli, ["data", "filter", str(scores), "-o", str(kept), "--key", "nope", "--min", "0"])
    assert result.exit_code == 1 and "has no 'nope' scores" in result.output
    result = CliRunner().invoke(cli, ["data", "filter", str(scores), "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and not (tmp_path / "x.json").exists()


def test_filter_within_an_index_takes_quantiles_over_that_subset(cli, tmp_path):
    scores = tmp_path / "s.json"
    index_file.write_scores(scores, {"perplexity": [1.0, 2.0, 3.0, 4.0, 50.0, 60.0]}, {"input": "x"})
    within = tmp_path / "dedup.json"
    index_file.write_index(within, [0, 1, 2, 3], 6, {})
    out = tmp_path / "kept.npy"
    result = CliRunner().invoke(cli, ["data", "filter", str(scores), "-o", str(out), "--within", str(within), "--max-quantile", "0.5"])
    assert result.exit_code == 0, result.output
    assert index_file.read_index(out)[0] == [0, 1]  # median of 1..4 is 2.5


def test_read_jsonl_skips_blank_lines():
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write('{"text": "a"}\n\n{"text": "b"}\n')
    try:
        assert [r["text"] for r in read_jsonl(f.name)] == ["a", "b"]
    finally:
        os.unlink(f.name)
    with pytest.raises(InputError):
        read_jsonl(os.devnull)


# --- issue 15: bad paths, bad files and long runs -------------------------------------------------


def _corpus(tmp_path, n=6):
    return write_jsonl(tmp_path / "in.jsonl", [{"text": f"sample number {i} " * 5} for i in range(n)])


@pytest.mark.parametrize("suffix", [".json", ".npy"])
def test_dedup_refuses_an_output_that_is_its_input(cli, tmp_path, suffix):
    src = _corpus(tmp_path)
    before = src.read_bytes()
    target = src if suffix == ".json" else tmp_path / "in.jsonl.npy"
    if suffix == ".npy":  # the sidecar of in.jsonl.npy would be in.jsonl.npy.meta.json: aim it at the input
        target = tmp_path / "c.npy"
        src = tmp_path / "c.npy.meta.json"
        src.write_bytes(before)
    result = CliRunner().invoke(cli, ["data", "dedup", str(src), "-o", str(target), "--method", "exact"])
    assert result.exit_code == 1 and "would replace your data; choose another -o" in result.output, result.output
    assert src.read_bytes() == before


def test_filter_refuses_an_output_that_is_one_of_its_inputs(cli, tmp_path):
    scores = tmp_path / "s.json"
    index_file.write_scores(scores, {"perplexity": [1.0, 2.0, 3.0]}, {})
    within = tmp_path / "w.json"
    index_file.write_index(within, [0, 1], 3, {})
    for out in (scores, within):
        before = out.read_bytes()
        result = CliRunner().invoke(cli, ["data", "filter", str(scores), "--within", str(within), "-o", str(out), "--max", "2"])
        assert result.exit_code == 1 and "is the input" in result.output, result.output
        assert out.read_bytes() == before


@pytest.mark.parametrize("where", ["file_as_folder", "folder", "long_name", "proc"])
def test_impossible_output_paths_are_clean_errors(cli, tmp_path, where):
    src = _corpus(tmp_path)
    out = {
        "file_as_folder": src / "sub" / "out.json",
        "folder": tmp_path,
        "long_name": tmp_path / ("x" * 300 + ".json"),
        "proc": Path("/proc/leff-no-such-folder/out.json"),
    }[where]
    result = CliRunner().invoke(cli, ["data", "dedup", str(src), "-o", str(out), "--method", "exact"])
    assert result.exit_code in (1, 2), result.output  # 2: click's own usage error (a folder)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and len(result.output) < 600
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_an_unwritable_folder_is_refused_before_any_work(cli, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    src = _corpus(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(cli, ["data", "score", str(src), "-o", str(locked / "s.json")])
    assert result.exit_code == 1 and "no permission to write" in result.output


def test_deeply_nested_json_lines_are_a_clean_error(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n' + '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    for command in (["dedup"], ["score", "--train-steps", "1"]):
        result = CliRunner().invoke(cli, ["data", *command, str(src), "-o", str(tmp_path / "o.json")])
        assert result.exit_code == 1 and "nests JSON too deeply" in result.output, result.output
    with pytest.raises(index_file.IndexFileError, match="unreadable"):
        (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        index_file.read_index(tmp_path / "deep.json")


def test_a_failed_write_removes_its_temporary_file_and_the_folders_it_made(tmp_path):
    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        index_file.atomic_write(tmp_path / "a" / "b" / "out.json", broken)
    assert os.listdir(tmp_path) == []


def test_an_npy_index_and_its_sidecar_must_belong_together(tmp_path, monkeypatch):
    path = tmp_path / "kept.npy"
    index_file.write_index(path, [0, 1, 2], 10, {"run": 1})
    old_sidecar = index_file.sidecar_path(path).read_bytes()
    index_file.write_index(path, [5, 6], 10, {"run": 2})
    assert index_file.read_index(path)[0] == [5, 6]
    index_file.sidecar_path(path).write_bytes(old_sidecar)  # as if the second sidecar rename never happened
    with pytest.raises(index_file.IndexFileError, match="does not match its sidecar"):
        index_file.read_index(path)

    def crash(*args, **kwargs):  # a failure between the two renames
        raise OSError("killed")

    index_file.write_index(path, [1], 10, {})
    monkeypatch.setattr(index_file, "_write_json", crash)
    with pytest.raises(OSError):
        index_file.write_index(path, [2, 3], 10, {})
    monkeypatch.undo()
    with pytest.raises(index_file.IndexFileError, match="does not match its sidecar"):
        index_file.read_index(path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def _npy(tmp_path, array, sidecar=True):
    path = tmp_path / "i.npy"
    np.save(path, array)
    if sidecar:
        index_file.sidecar_path(path).write_text(json.dumps({"format": index_file.INDEX_FORMAT, "total": 10, "meta": {}}))
    return path


@pytest.mark.parametrize(
    "kept, total, message",
    [
        (["1", "2"], 10, "entry 0 of the kept indices is 1 (str)"),
        ([1.5], 10, "entry 0 of the kept indices is 1.5 (float)"),
        ([True], 10, "(bool)"),
        ([1, 1], 10, "index 1 appears twice"),
        ([-1], 10, "lies outside [0, 10)"),
        ([12], 10, "lies outside [0, 10)"),
        ([1], "10", "'total' is 10, not a sample count"),
        ([1], None, "'total' is None, not a sample count"),
    ],
)
def test_a_json_index_is_checked_when_read(tmp_path, kept, total, message):
    path = tmp_path / "i.json"
    path.write_text(json.dumps({"format": index_file.INDEX_FORMAT, "total": total, "kept": kept, "meta": {}}))
    with pytest.raises(index_file.IndexFileError, match=re.escape(message)):
        index_file.read_index(path)


@pytest.mark.parametrize("content", ["[1, 2]", '"kept"', "null", "{", '{"format": "lightning-eff-index/1", "kept": 3}'])
def test_a_file_that_is_not_an_index_is_named(tmp_path, content):
    path = tmp_path / "i.json"
    path.write_text(content)
    with pytest.raises(index_file.IndexFileError, match="not a lightning-eff index file|unreadable"):
        index_file.read_index(path)


@pytest.mark.parametrize(
    "array, sidecar, message",
    [
        (np.zeros((2, 2), dtype=np.int64), True, "a 2-D array of shape (2, 2); an index is 1-D"),
        (np.array([0.5, 1.0]), True, "holds float64 values; indices are integers"),
        (np.array([True, False]), True, "holds bool values"),
        (np.array([1, 1]), True, "index 1 appears twice"),
        (np.array([1, 2]), False, "has no sidecar i.npy.meta.json"),
    ],
)
def test_an_npy_index_is_checked_when_read(tmp_path, array, sidecar, message):
    with pytest.raises(index_file.IndexFileError, match=re.escape(message)):
        index_file.read_index(_npy(tmp_path, array, sidecar))


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], "not a lightning-eff scores file"),
        ({"format": index_file.SCORES_FORMAT, "total": 2}, "'scores' must map each kind"),
        ({"format": index_file.SCORES_FORMAT, "total": 2, "scores": {"perplexity": 3}}, "are a int, not a list"),
        ({"format": index_file.SCORES_FORMAT, "total": 2, "scores": {"perplexity": [1.0, "x"]}}, "score 1 is x (str)"),
        ({"format": index_file.SCORES_FORMAT, "total": 2, "scores": {"perplexity": [1.0, True]}}, "(bool)"),
        ({"format": index_file.SCORES_FORMAT, "total": 3, "scores": {"perplexity": [1.0, 2.0]}}, "2 'perplexity' scores for 3"),
        ({"format": index_file.SCORES_FORMAT, "total": 1, "scores": {"perplexity": [1.0]}, "meta": [1]}, "'meta' is a list"),
    ],
)
def test_a_scores_file_is_checked_when_read(tmp_path, payload, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(index_file.IndexFileError, match=re.escape(message)):
        index_file.read_scores(path)


def test_indices_given_in_python_follow_the_same_rules():
    dataset = TinyDataModule().train_dataloader().dataset
    assert len(IndexFilteredDataset(dataset, np.array([3, 1]))) == 2
    for bad, message in (([1.7], "(float)"), ([True], "(bool)"), ([2, 2], "appears twice"), (None, "got NoneType")):
        with pytest.raises(index_file.IndexFileError, match=re.escape(message)):
            IndexFilteredDataset(dataset, bad)


def test_score_prints_progress_lines_when_stderr_is_not_a_terminal(cli, tmp_path, monkeypatch):
    from lightning_eff.plugins.data import data_cli

    monkeypatch.setattr(data_cli, "PROGRESS_EVERY_S", 0.0)
    src = _corpus(tmp_path, 4)
    args = ["data", "score", str(src), "-o", str(tmp_path / "s.json"), "--train-steps", "3", "--hidden", "16", "--max-len", "16"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "training the reference LM: 3/3 (100%)" in result.stderr and "perplexity: 4/4 (100%)" in result.stderr
    assert "training the reference LM" not in result.stdout
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0 and result.stderr == ""
