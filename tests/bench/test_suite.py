"""`lightning-eff bench suite`: every entry through the harness into its own folder, read back when a
stopped suite is run again, and one results page (Markdown + HTML) over all of them."""

from __future__ import annotations

import pytest

from lightning_eff.bench.suite import SuiteEntriesFailed, entry_recipe, run_suite, select_entries
from lightning_eff.bench.suite_entries import ENTRIES, entry_folder
from lightning_eff.bench.suite_page import HAND_WRITTEN_MARKER, spread_text, write_html, write_markdown
from lightning_eff.errors import ConfigError
from lightning_eff.recipe import load_recipe

TWO = ["random_subset", "selective_backprop"]  # cheap vision entries; the second compares with the first


@pytest.fixture(scope="module")
def suite_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    lines: list[str] = []
    rows = run_suite(out, only=TWO, quick=True, say=lines.append)
    return out, rows, lines


def test_each_entry_writes_its_own_report_with_compute_counted(suite_out):
    out, rows, _ = suite_out
    assert [r.entry.name for r in rows] == TWO
    for row in rows:
        assert (out / row.folder / "results.json").is_file()
        assert row.result.task.details["label_noise"] == 0.3, "data entries run in their label-noise regime"
        assert all(run.flops and run.flops > 0 for run in row.result.runs)


def test_progress_lines_count_entries_and_give_an_eta(suite_out):
    _, _, lines = suite_out
    starts = [line for line in lines if line.startswith("[")]
    assert starts[0].startswith("[1/2] random_subset") and "ETA after the first entry" in starts[0]
    assert starts[1].startswith("[2/2] selective_backprop") and "ETA 0m" in starts[1]


def test_a_stopped_suite_continues_where_it_stopped(suite_out):
    out, rows, _ = suite_out

    def must_not_run(**kwargs):
        raise AssertionError(f"entry ran again: {kwargs['recipe']}")  # pragma: no cover

    again = run_suite(out, only=TWO, quick=True, say=lambda line: None, run=must_not_run)
    assert [r.ran_now for r in again] == [False, False]
    assert again[0].result.summary == rows[0].result.summary


def test_re_running_some_entries_keeps_the_others_finished_earlier_on_the_page(suite_out):
    out, rows, _ = suite_out

    def must_not_run(**kwargs):
        raise AssertionError(f"entry ran again: {kwargs['recipe']}")  # pragma: no cover

    again = run_suite(out, only=["selective_backprop"], quick=True, say=lambda line: None, run=must_not_run)
    assert [r.entry.name for r in again] == TWO, "the entry not selected is still a row, in suite order"
    assert again[0].result.summary == rows[0].result.summary


def test_an_entry_finished_with_other_settings_is_not_kept_on_the_page(suite_out):
    out, _, _ = suite_out

    def crash(**kwargs):
        raise RuntimeError("stop here")

    with pytest.raises(SuiteEntriesFailed) as failure:
        run_suite(out, only=["selective_backprop"], quick=True, repeats=2, say=lambda line: None, run=crash)
    assert failure.value.rows == [], "random_subset finished with one repeat, not two"


def test_changed_settings_run_the_entry_again(suite_out):
    out, _, _ = suite_out
    seen = []

    def record(**kwargs):
        seen.append(kwargs["recipe"])
        raise RuntimeError("stop here")

    with pytest.raises(SuiteEntriesFailed, match="random_subset: crashed: RuntimeError: stop here"):
        run_suite(out, only=["random_subset"], quick=True, repeats=2, say=lambda line: None, run=record)
    assert seen == ["random_subset"]


def test_a_resized_task_runs_its_entries_again_instead_of_keeping_the_old_size(suite_out, monkeypatch):
    import dataclasses

    from lightning_eff.bench import suite
    from lightning_eff.bench.tasks import TASKS
    from lightning_eff.bench.tasks.vision import DigitsCNN

    out, _, _ = suite_out
    built_now = TASKS["vision"]
    monkeypatch.setitem(TASKS, "vision", lambda **o: dataclasses.replace(built_now(**o), make_module=lambda: DigitsCNN(width=32)))
    suite.task_fingerprint.cache_clear()
    seen = []

    def record(**kwargs):
        seen.append(kwargs["recipe"])
        raise RuntimeError("stop here")

    try:
        with pytest.raises(SuiteEntriesFailed) as failure:
            run_suite(out, only=["random_subset"], quick=True, say=lambda line: None, run=record)
    finally:
        suite.task_fingerprint.cache_clear()  # the next test sees the task as shipped
    assert seen == ["random_subset"], "same settings, but the model is another size: it must run again"
    assert "selective_backprop" not in [row.entry.name for row in failure.value.rows], "nor is the other row kept"


def test_the_results_page_has_every_entry_the_side_by_side_and_the_environment(suite_out):
    out, rows, _ = suite_out
    page = write_markdown(rows, out / "results.md", command="lightning-eff bench suite --quick").read_text()
    for row in rows:
        assert f"[{row.entry.name}]({row.folder}/report.html)" in page
        assert row.result.summary.verdict in page
    assert "- selective_backprop: time" in page and "vs random_subset: time" in page
    assert "commit `" in page and "torch" in page
    html = write_html(rows, out, command="lightning-eff bench suite --quick").read_text()
    assert 'src="suite_ratios.png"' in html and (out / "suite_ratios.png").stat().st_size > 1000
    assert html.count("<tr>") == len(rows) + 1


def test_rewriting_the_page_keeps_the_hand_written_part_and_only_that(suite_out):
    out, rows, _ = suite_out
    path = out / "page.md"
    path.write_text("# stale table\n| old | row |\n" + HAND_WRITTEN_MARKER + "\n\n## Reading this page\n\n- why 1.2x\n")
    page = write_markdown(rows, path, command="lightning-eff bench suite").read_text()
    assert "stale table" not in page and "| old | row |" not in page
    assert page.count(HAND_WRITTEN_MARKER) == 1
    assert page.endswith(HAND_WRITTEN_MARKER + "\n## Reading this page\n\n- why 1.2x\n")
    assert write_markdown(rows, path, command="lightning-eff bench suite").read_text() == page  # stable
    fresh = write_markdown(rows, out / "fresh.md", command="lightning-eff bench suite").read_text()
    assert HAND_WRITTEN_MARKER not in fresh


def test_unknown_entries_are_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown suite entries.*quickstart"):
        select_entries(["no_such_entry"])


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_entry_names_a_recipe_that_loads_and_validates(entry):
    recipe = entry_recipe(entry)
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    assert recipe.validate() == []
    assert entry_folder(entry.name) and "/" not in entry_folder(entry.name)


def test_every_shipped_recipe_is_in_the_suite():
    from importlib import resources

    shipped = {p.name.removesuffix(".yaml") for p in resources.files("lightning_eff.recipes").iterdir() if p.name.endswith(".yaml")}
    in_suite = {e.recipe for e in ENTRIES if isinstance(e.recipe, str)}
    assert shipped - in_suite == set()


def test_spread_text_prints_one_value_once():
    from lightning_eff.bench.schema import Spread

    assert spread_text(Spread(min=1.5, median=1.5, max=1.5, n=1)) == "1.50x (1 run)"
    assert spread_text(Spread(min=1.2, median=1.5, max=1.9, n=3)) == "1.50x (1.20-1.90)"
    assert spread_text(None) == "-"


def test_the_suite_command_writes_the_page_with_links_relative_to_it(tmp_path):
    from click.testing import CliRunner

    from lightning_eff.bench.command import bench

    out, page = tmp_path / "out", tmp_path / "docs" / "results.md"
    result = CliRunner().invoke(bench, ["suite", "--quick", "--only", "random_subset", "--out", str(out), "--page", str(page)])
    assert result.exit_code == 0, result.output
    assert "[random_subset](../out/random_subset/report.html)" in page.read_text()
    assert (out / "results.html").is_file() and (out / "results.md").is_file()


def test_quick_bench_is_labelled_as_measuring_nothing():
    from lightning_eff.bench.harness import run_bench

    result = run_bench(task="vision", recipe="random_subset", quick=True, quiet=True, flops="off")
    assert result.task.max_steps == 6 and len(result.runs) == 2
    assert any("measures nothing" in w for w in result.warnings)


def test_a_failing_entry_is_reported_and_the_others_still_run(tmp_path):
    from lightning_eff.bench.suite import SuiteEntriesFailed

    calls = []

    def fake(**kwargs):
        calls.append(kwargs["recipe"])
        raise ConfigError("preflight: no reference available")

    with pytest.raises(SuiteEntriesFailed, match="random_subset: preflight: no reference available") as info:
        run_suite(tmp_path, only=["random_subset", "selective_backprop"], quick=True, say=lambda line: None, run=fake)
    assert calls == ["random_subset", "selective_backprop"] and info.value.rows == []


@pytest.mark.parametrize("name", ["rho_loss", "info_batch"])
def test_the_data_entries_that_need_sample_indices_run_on_vision(name, tmp_path):
    rows = run_suite(tmp_path, only=[name], quick=True, say=lambda line: None)
    assert rows[0].result.runs[1].steps > 0


def test_an_entry_that_crashes_mid_run_is_reported_like_a_failure(tmp_path):
    from lightning_eff.bench.suite import SuiteEntriesFailed

    def crash(**kwargs):
        raise ValueError("zip() argument 2 is shorter than argument 1")

    with pytest.raises(SuiteEntriesFailed, match="random_subset: crashed: ValueError: zip"):
        run_suite(tmp_path, only=["random_subset"], quick=True, say=lambda line: None, run=crash)
