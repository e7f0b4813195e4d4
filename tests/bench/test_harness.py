"""run_bench and `lightning-eff bench` end to end on the vision task, a few steps per run."""

import json
import re

import pytest
import yaml
from bench_techniques import EMPTY, KEEP_HALF, NO_LEARNING, ZERO_AT_EPOCH_END
from click.testing import CliRunner

from lightning_eff.bench import format_table, load_result, run_bench
from lightning_eff.bench import harness as harness_module
from lightning_eff.bench.command import bench
from lightning_eff.bench.schema import BenchResult
from lightning_eff.bench.timing import MetricMissingError
from lightning_eff.errors import ConfigError

STEPS = 20


@pytest.fixture(scope="module")
def cli_bench(tmp_path_factory):
    """One CLI benchmark shared by the report tests: KeepFirst(keep=0.5), one repeat."""
    folder = tmp_path_factory.mktemp("cli")
    recipe = folder / "keep_half.yaml"
    recipe.write_text(yaml.safe_dump({**KEEP_HALF, "description": "half of every batch (`keep: 0.5`)"}))
    out = folder / "out"
    args = ["--task", "vision", "--recipe", str(recipe), "--repeats", "1", "--max-steps", str(STEPS), "--evals", "2"]
    result = CliRunner().invoke(bench, [*args, "--warmup-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_report_files_exist(cli_bench):
    out, _ = cli_bench
    for name in ("results.json", "results.schema.json", "quality_vs_time.png", "quality_vs_flops.png", "quality_vs_step.png", "report.html"):
        assert (out / name).stat().st_size > 0, name


def test_results_json_validates_against_its_schema(cli_bench):
    out, _ = cli_bench
    result = load_result(out / "results.json")  # pydantic validation: raises on any mismatch
    assert json.loads((out / "results.schema.json").read_text()) == BenchResult.model_json_schema()
    assert [r.arm for r in result.runs] == ["baseline", "recipe"]
    assert all(r.steps == STEPS for r in result.runs)


def test_json_holds_the_numbers_the_table_printed(cli_bench):
    out, printed = cli_bench
    result = load_result(out / "results.json")
    assert format_table(result) in printed
    wall_line = next(line for line in printed.splitlines() if line.strip().startswith("wall time (s)"))
    assert f"{result.summary.baseline['wall_seconds']:.2f}" in wall_line
    assert f"{result.summary.recipe['wall_seconds']:.2f}" in wall_line
    ratio = result.summary.ratios["wall_seconds"]
    assert ratio.n == 1 and f"{ratio.median:.2f} (1 run)" in wall_line  # one repeat: its value once, not x / x / x
    assert " / " not in wall_line


def test_report_html_is_self_contained_and_shows_the_table(cli_bench):
    out, _ = cli_bench
    html = (out / "report.html").read_text()
    result = load_result(out / "results.json")
    assert html.count("data:image/png;base64,") == 3  # quality vs time, FLOPs, steps
    assert not re.search(r'src="(?!data:)', html)  # nothing fetched from elsewhere
    assert f"{result.summary.baseline['train_seconds']:.2f}" in html
    assert result.environment.command in html
    assert "`" not in html and "<code>keep: 0.5</code>" in html  # markdown code spans render as <code>


def test_report_states_machine_versions_and_command(cli_bench):
    out, _ = cli_bench
    env = load_result(out / "results.json").environment
    assert {"torch", "lightning", "lightning-eff"} <= set(env.versions)
    assert env.cpu_count and env.platform
    assert env.command.startswith("lightning-eff bench --task vision --recipe ") and f"--max-steps {STEPS}" in env.command


def test_technique_metrics_are_reported(cli_bench):
    out, printed = cli_bench
    result = load_result(out / "results.json")
    recipe_runs = [r for r in result.runs if r.arm == "recipe"]
    batch = result.task.details["batch_size"]
    for run in recipe_runs:
        assert run.efficiency_metrics["efficiency/keep_first/samples_skipped"] == STEPS * batch // 2
        assert run.savings["keep_first"]["backward_samples"] == STEPS * batch // 2
        assert run.samples == STEPS * batch  # throughput counts the batches the loader delivered
    assert re.search(rf"samples skipped\s+-\s+{STEPS * batch // 2:,}", printed)


def test_baseline_schedule_decays_fully(cli_bench):
    out, _ = cli_bench
    result = load_result(out / "results.json")
    assert all(r.final_lr_fraction is not None and r.final_lr_fraction < 0.05 for r in result.runs)
    assert not any("not fully decayed" in w for w in result.warnings)


def test_runs_alternate_and_share_seeds():
    lines = []
    result = run_bench("vision", EMPTY, repeats=2, max_steps=4, evals=1, warmup_steps=0, progress=lines.append)
    arms = [re.search(r"vision: (\w+)", line).group(1) for line in lines if line.startswith("[")]
    assert arms == ["baseline", "recipe", "recipe", "baseline"]
    assert all("ETA" in line for line in lines if line.startswith("["))
    # Same seed and no technique: identical training, so identical quality in each repeat.
    for c in result.comparisons:
        assert c.quality_delta == 0.0


def test_a_recipe_that_never_reaches_baseline_quality_is_did_not_reach():
    result = run_bench("vision", NO_LEARNING, repeats=1, max_steps=30, evals=3, warmup_steps=0, quiet=True)
    assert result.summary.verdict == "did not reach"
    assert result.comparisons[0].speedup is None and not result.comparisons[0].reached
    assert result.summary.speedup is None
    recipe_run = next(r for r in result.runs if r.arm == "recipe")
    assert recipe_run.time_to_quality is None
    table = format_table(result)
    assert re.search(r"time to quality \(s\)\s+[\d.]+\s+did not reach\s+did not reach", table)
    assert "speed-up" not in table


def fail_if_training_starts(*args, **kwargs):
    raise AssertionError("training started although the input was invalid")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "imagenet"}, "unknown bench task 'imagenet'; known tasks: vision, lm, finetune"),
        ({"recipe": "no_such_recipe"}, "recipe 'no_such_recipe' is neither a file nor a shipped recipe"),
        ({"model": "nodots", "data": "x:Y"}, "write it as --model my_package.my_module:MyModule"),
        ({"model": "no_such_pkg.mod:M", "data": "x:Y"}, "cannot import 'no_such_pkg.mod:M'"),
        ({"model": "lightning_eff.testing:Missing", "data": "x:Y"}, "has no 'Missing'"),
        ({"model": "lightning_eff.testing:TinyDataModule", "data": "lightning_eff.testing:TinyDataModule"}, "is not a lightning LightningModule subclass"),
        ({"model": "lightning_eff.testing:TinyClassifier"}, "give both --model"),
        ({"recipe": {"techniques": [{"class_path": "bench_techniques.NoSuch"}]}}, "cannot import 'bench_techniques.NoSuch'"),
        ({"logger": "mlflow"}, "unknown logger 'mlflow'"),
        ({"logger": "csv"}, "give out="),
        ({"task": "lm", "label_noise": 0.2}, "task 'lm' does not take label_noise"),
        ({"label_noise": 1.5}, "label_noise=1.5 must be in [0, 1)"),
        ({"recipe_steps": 0}, "recipe_steps=0 must be in (0, 100]"),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_message(monkeypatch, kwargs, message):
    monkeypatch.setattr(harness_module, "run_once", fail_if_training_starts)
    kwargs = {"task": "vision", "recipe": EMPTY, **kwargs}
    with pytest.raises(ConfigError) as info:
        run_bench(**kwargs)
    assert message in str(info.value)


def test_cli_reports_bad_input_without_a_traceback(monkeypatch):
    monkeypatch.setattr(harness_module, "run_once", fail_if_training_starts)
    result = CliRunner().invoke(bench, ["--task", "imagenet"])
    assert result.exit_code != 0
    assert "unknown bench task 'imagenet'; known tasks: vision, lm, finetune" in result.output
    assert "Traceback" not in result.output


def test_budget_and_max_steps_must_agree():
    result = CliRunner().invoke(bench, ["--budget", "10", "--max-steps", "20"])
    assert result.exit_code != 0 and "disagree" in result.output


def test_user_module_and_data_by_import_path_with_an_undecayed_schedule_warns():
    result = run_bench(
        model="lightning_eff.testing:TinyClassifier", data="lightning_eff.testing:TinyDataModule",
        metric="val/loss", higher_is_better=False, recipe=EMPTY, repeats=1, max_steps=16, evals=2, warmup_steps=0, quiet=True,
    )
    assert result.task.metric == "val/loss" and not result.task.higher_is_better
    assert result.runs[0].curve[-1].quality < result.runs[0].curve[0].quality
    assert any("not fully decayed" in w for w in result.warnings)  # TinyClassifier's 1/(1+0.01 t) schedule


def test_user_metric_that_is_not_logged_fails_before_the_first_step():
    with pytest.raises(MetricMissingError, match=r"'val/acc' was not logged \(logged: val/loss\)"):
        run_bench(
            model="lightning_eff.testing:TinyClassifier", data="lightning_eff.testing:TinyDataModule",
            metric="val/acc", higher_is_better=True, recipe=EMPTY, repeats=1, max_steps=4, evals=1, warmup_steps=0, quiet=True,
        )


def test_recipe_cannot_change_the_step_budget_of_its_arm():
    recipe = {"techniques": [], "trainer": {"max_steps": 3}}
    result = run_bench("vision", recipe, repeats=1, max_steps=6, evals=1, warmup_steps=0, quiet=True)
    assert all(r.steps == 6 for r in result.runs)
    assert any("['max_steps'] are ignored" in w for w in result.warnings)


def test_csv_logger_writes_one_log_per_run(tmp_path):
    run_bench("vision", EMPTY, repeats=1, max_steps=4, evals=1, warmup_steps=0, quiet=True, logger="csv", out=tmp_path)
    logs = sorted(p.parent.name for p in (tmp_path / "logs" / "vision").glob("*/metrics.csv"))
    assert logs == ["baseline-r0", "recipe-r0"]


def test_recipe_steps_give_the_recipe_arm_its_own_longer_budget_and_the_report_says_so():
    # 18 steps: past the first few, where the CNN's accuracy still jumps around chance
    result = run_bench("vision", EMPTY, repeats=1, max_steps=18, evals=3, recipe_steps=2.0, warmup_steps=0, quiet=True, flops="off")
    steps = {r.arm: r.steps for r in result.runs}
    assert steps == {"baseline": 18, "recipe": 36}
    recipe_run = next(r for r in result.runs if r.arm == "recipe")
    assert [p.step for p in recipe_run.curve][-1] == 36  # evaluated at the same interval, to its own end
    assert result.task.recipe_max_steps == 36 and "--recipe-steps 2.0" in result.environment.command
    assert any("recipe arm trained 36 steps, the baseline 18" in w for w in result.warnings)
    assert "18 steps (recipe 36)" in format_table(result)
    # Same seed, no technique, twice the steps (its own, slower-decaying schedule): it reaches the
    # baseline's final accuracy within its run, so time to quality is defined (deterministic on CPU).
    assert recipe_run.time_to_quality is not None


def test_weights_changed_after_the_last_evaluation_are_evaluated_again():
    # Lightning's ModelPruning prunes at the end of the epoch, after its last validation: the bench
    # reported the unpruned model's quality as the pruned recipe's (a false "faster").
    result = run_bench("vision", ZERO_AT_EPOCH_END, repeats=1, max_steps=6, evals=2, warmup_steps=0, quiet=True)
    baseline, recipe = (next(r for r in result.runs if r.arm == arm) for arm in ("baseline", "recipe"))
    assert [p.step for p in recipe.curve] == [p.step for p in baseline.curve]  # replaced, not appended
    assert recipe.curve[0].quality == baseline.curve[0].quality  # same seed, same model until the end
    assert recipe.final_quality < baseline.final_quality  # all-zero weights: one class for every image
    assert recipe.curve[-1].train_seconds <= recipe.train_seconds
    assert result.summary.verdict == "did not reach"
