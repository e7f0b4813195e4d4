import json

from click.testing import CliRunner

from lightning_eff.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_plugins_json_lists_the_builtin_families():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    names = {p["name"] for p in json.loads(result.output)["plugins"]}
    assert {"pruning", "freezing", "data", "precision", "moe"} <= names


def test_info_prints_options_with_types_defaults_and_descriptions(example_registry):
    result = invoke("info", "weight_noise")
    assert result.exit_code == 0, result.output
    assert "weight_noise" in result.output and "phase: optimizer" in result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("scale"))
    assert "float" in line and "0.001" in line and "std of the noise" in line


def test_info_on_an_unknown_technique_fails_with_the_known_names(example_registry):
    result = invoke("info", "nope")
    assert result.exit_code != 0
    assert "unknown technique 'nope'" in result.output and "weight_noise" in result.output


def test_check_accepts_a_valid_recipe_and_prints_the_order(tmp_path, example_registry):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: constant_aux}, {name: half_batch}]\n")
    result = invoke("check", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "OK, 2 technique(s)" in lines[0]
    assert "HalfBatch" in lines[1] and "ConstantAuxLoss" in lines[2]  # data phase before loss phase


def test_check_rejects_a_bad_recipe_with_every_problem(tmp_path, example_registry):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: half_batch, options: {keep: 3}}, {name: missing}]\n")
    result = invoke("check", str(path))
    assert result.exit_code != 0
    assert "keep=3" in result.output and "unknown technique 'missing'" in result.output


def test_bench_kernels_subcommand_checks_every_kernel_op_and_writes_the_csv(tmp_path):
    import csv
    import os
    import subprocess
    import sys

    out = tmp_path / "kernels.csv"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "lightning_eff.cli", "bench", "kernels", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    from lightning_eff.kernels import bench

    rows = list(csv.DictReader(out.open()))
    assert {r["op"] for r in rows} == {case.op for case in bench.cpu_cases()}
    assert all(r["status"] == "ok" for r in rows)


def test_bench_without_a_subcommand_still_takes_its_options(tmp_path):
    from lightning_eff.bench.command import bench

    result = CliRunner().invoke(bench, ["--task", "nope", "--quiet", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "unknown bench task 'nope'" in result.output
