"""Issue 15: every bad recipe gives one clear error naming the fix, before step 0, with no traceback,
in bounded time and with a bounded message. Run through ``lightning-eff check`` (CliRunner) and
``load_recipe``; each case failed (hang, traceback or silent acceptance) before the fix."""

import time

import pytest
from click.testing import CliRunner

from lightning_eff import ConfigError
from lightning_eff.cli import cli
from lightning_eff.recipe import MAX_DEPTH, load_recipe


def check(path):
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert time.perf_counter() - start < 10, "check must answer at once"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def refused(path, *fragments):
    result = check(path)
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert len(result.output) < 8000, f"error message of {len(result.output)} characters"
    return result.output


def alias_bomb(levels):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntechniques: *a{levels - 1}\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    assert path.stat().st_size < 500
    refused(path, "more than 100000 values once YAML aliases are expanded", "remove the repeated aliases")


def test_a_smaller_alias_expansion_gives_a_short_error_not_the_whole_input(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(4))  # ~8,000 values: under the limit, but every entry is wrong
    out = refused(path, "techniques[0]: expected a mapping with 'name' and 'options', got list")
    assert len(out) < 4000


def test_modest_aliases_still_work(tmp_path, example_registry):
    path = tmp_path / "r.yaml"
    path.write_text("techniques:\n  - {name: weight_noise, options: &o {scale: 0.5}}\n  - {name: weight_noise, options: *o}\n")
    assert [t.config.scale for t in load_recipe(path).build()] == [0.5, 0.5]


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("techniques: []\n" + "#" * (2 << 20))
    refused(path, "larger than 1024 KiB")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("techniques:\n  - name: gradual_pruning\n    options: {final_sparsity: 0.5}  # caf\xe9\n".encode("latin-1"),
         "not UTF-8 text (byte 0xe9 on line 3); save the file as UTF-8"),
        ("techniques: []\n".encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "holds NUL bytes"),
        (bytes(range(128, 256)), "not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_utf8_text_is_named_as_such(tmp_path, content, fragment):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    refused(path, fragment)


def test_a_utf8_byte_order_mark_is_fine(tmp_path, example_registry):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbftechniques: [{name: weight_noise}]\n")
    assert len(load_recipe(path).entries) == 1


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("techniques:\n  - name: gradual_pruning\n    options: {1: 2}\n", "options: key 1 (int) is not a name"),
        ("techniques:\n  - {name: gradual_pruning, true: 1}\n", "key True (bool) is not a name"),
        ("1: x\ntechniques: []\n", "recipe: key 1 (int) is not a name"),
        ("techniques: []\ntrainer: {3: 1}\n", "trainer: key 3 (int) is not a name"),
    ],
)
def test_non_string_keys_are_named(tmp_path, yaml_text, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(yaml_text)
    refused(path, fragment)


@pytest.mark.parametrize(
    "class_path, fragment",
    [
        ("lightning_eff.Technique", "is an abstract base class; name a concrete subclass"),
        ("lightning.pytorch.callbacks.BaseFinetuning", "is an abstract base class"),
        ("lightning.pytorch.Callback", "is an abstract base class"),
        ("..x", "is not a dotted path to a class"),
        ("x..y", "is not a dotted path to a class"),
        ("nothing", "is not a dotted path to a class"),
        ("no_such_package_xyz.Thing", "cannot import 'no_such_package_xyz.Thing'"),
        ("lightning.pytorch.callbacks.ModelPrunin", "has no 'ModelPrunin' (did you mean 'ModelPruning'?)"),
        ("collections.OrderedDict", "is not a lightning_eff.Technique or a lightning.pytorch Callback"),
        ("lightning_eff.hub.EfficiencyHub", "lightning-eff machinery"),
    ],
)
def test_class_path_names_only_a_concrete_callback_class(tmp_path, class_path, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(f"techniques: [{{class_path: '{class_path}'}}]\n")
    refused(path, fragment)


def test_class_path_never_calls_a_function(tmp_path, monkeypatch):
    import tempfile

    calls = []
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: calls.append(a))
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{class_path: 'tempfile:mkdtemp'}]\n")
    refused(path, "tempfile:mkdtemp is a function, not a class")
    assert calls == []


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000])
def test_deep_nesting_is_refused(tmp_path, depth):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: " + "[" * depth + "]" * depth + "\n")
    refused(path, f"nested deeper than {MAX_DEPTH} levels")
    with pytest.raises(ConfigError, match="nested deeper"):
        nested = []
        for _ in range(depth):
            nested = [nested]
        load_recipe({"techniques": nested})


def test_a_python_mapping_with_a_cycle_is_refused():
    data = {"techniques": []}
    data["techniques"].append(data)
    with pytest.raises(ConfigError, match="more than 100000 values|nested deeper"):
        load_recipe(data)


def test_huge_numbers_are_refused_by_a_bound(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: moe_upcycling, options: {seed: 100000000000000000000000, num_experts: 1000000000}}]\n")
    refused(path, "seed=100000000000000000000000: Input should be less than or equal to 9223372036854775807",
            "num_experts=1000000000: Input should be less than or equal to 1024")
    path.write_text("techniques: [{name: moe_upcycling, options: {seed: " + "9" * 5000 + "}}]\n")
    refused(path, "cannot read the YAML")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("{load_balancing_coef: .inf}", "load_balancing_coef=inf: Input should be a finite number"),
        ("{z_loss_coef: .nan}", "z_loss_coef=nan: Input should be a finite number"),
        ("{router_init_std: .inf}", "router_init_std=inf"),
        ("{capacity_factor: .inf}", "capacity_factor=inf: Input should be a finite number"),
        ("{num_experts: true}", "num_experts=True: got true, a bool"),
    ],
)
def test_non_finite_and_bool_numbers_are_refused_in_recipes(tmp_path, options, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(f"techniques: [{{name: moe_upcycling, options: {options}}}]\n")
    refused(path, fragment)


def test_a_duplicate_key_is_refused_not_silently_overwritten(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques:\n  - name: gradual_pruning\n    options: {final_sparsity: 0.5, final_sparsity: 0.6}\n")
    refused(path, "found duplicate key 'final_sparsity'", "line 3")
    path.write_text("techniques: []\ntechniques: []\n")
    refused(path, "found duplicate key 'techniques'")


def test_a_merge_key_may_be_overridden(tmp_path, example_registry):
    path = tmp_path / "r.yaml"
    path.write_text("techniques:\n  - name: weight_noise\n    options:\n      <<: {scale: 0.5, every: 3}\n      scale: 0.25\n")
    config = load_recipe(path).build()[0].config
    assert (config.scale, config.every) == (0.25, 3)


def test_the_trainer_section_is_checked_against_lightning(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: []\ntrainer: {max_stepz: 10, accumulate_grad_batches: 0, gradient_clip_val: .inf, callbacks: []}\n")
    out = refused(path, "unknown Trainer argument 'max_stepz' (did you mean 'max_steps'?)",
                  "trainer: accumulate_grad_batches=0: Input should be greater than or equal to 1",
                  "gradient_clip_val=inf", "list callbacks under 'techniques' with class_path")
    assert "Traceback" not in out
    path.write_text("techniques: []\ntrainer: {max_steps: true}\n")
    refused(path, "max_steps=True")


def test_check_reports_two_batch_selectors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: random_subset}, {name: selective_backprop}]\n")
    refused(path, "two batch selectors are active (random_subset, selective_backprop): keep only one of them")


def test_check_reports_a_schedule_that_never_starts_within_max_steps(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: progressive_freezing, options: {start: 5000, end: 6000}}]\ntrainer: {max_steps: 1000}\n")
    refused(path, "techniques[0].options.start=5000: progressive_freezing never starts", "trainer.max_steps=1000")
    path.write_text("techniques: [{name: progressive_freezing, options: {start: 500, end: 6000}}]\ntrainer: {max_steps: 1000}\n")
    assert check(path).exit_code == 0


def test_an_unknown_technique_gets_the_closest_name(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: gradual_prunning}]\n")
    refused(path, "unknown technique 'gradual_prunning' (did you mean 'gradual_pruning'?)")


def test_an_unknown_recipe_name_gets_the_closest_shipped_one():
    with pytest.raises(ConfigError, match=r"did you mean 'quickstart'\?"):
        load_recipe("quikstart")
    with pytest.raises(ConfigError, match="neither a file"):
        load_recipe("x" * 5000)


def test_long_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{name: gradual_pruning, options: {final_sparsity: '" + "x" * 100_000 + "'}}]\n")
    out = refused(path, "final_sparsity='xxxx")
    assert len(out) < 600
    many = "".join(f"k{i}: 1\n" for i in range(500))
    path.write_text(many)
    out = refused(path, "... and 470 more problem(s)")
    assert len(out.splitlines()) <= 32


def test_a_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "leff_broken_module.py").write_text("raise AttributeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "r.yaml"
    path.write_text("techniques: [{class_path: leff_broken_module.Thing}]\n")
    refused(path, "cannot import 'leff_broken_module.Thing': importing leff_broken_module raised AttributeError: boom")


def test_nested_merge_keys_do_not_blow_up(tmp_path):
    lines = ["a0: &a0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}"]
    lines += [f"a{i}: &a{i}\n  <<: [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "r.yaml"
    path.write_text("\n".join(lines) + "\ntechniques: []\n")
    refused(path, "unknown top-level key 'a0'")
