"""A recipe, a CLI option and an index file are data: naming a file or a class in them must not run
code. Files are read with ``weights_only=True``; a class path may only name a class of the expected
kind, which lightning-eff builds itself."""

import pytest
import torch

from lightning_eff.errors import ConfigError
from lightning_eff.plugins.data import RhoLoss
from lightning_eff.plugins.data import reference as ref
from lightning_eff.testing import preflight_problems


class Exploit:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle's code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """A weights file whose unpickling would create ``marker``; proven live with weights_only=False."""
    path, marker = tmp_path / "reference.pt", tmp_path / "pwned"
    torch.save({"state_dict": {"w": Exploit(marker)}}, path)
    probe = tmp_path / "probe.pt"
    torch.save(Exploit(tmp_path / "probe-marker"), probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-marker").exists(), "the crafted pickle must be able to run code"
    return path, marker


def test_a_crafted_pickle_as_reference_is_refused_and_runs_nothing(crafted):
    path, marker = crafted
    problems = preflight_problems([RhoLoss(reference=str(path))])
    assert any(
        "rho_loss cannot load its reference" in p and "holds pickled Python objects" in p
        and "torch.save(model.state_dict(), path)" in p
        for p in problems
    ), problems
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".bin"])
def test_every_weights_suffix_is_read_as_data(crafted, suffix):
    path, marker = crafted
    renamed = path.rename(path.with_suffix(suffix))
    with pytest.raises(ConfigError, match="holds pickled Python objects"):
        ref.load_reference(str(renamed))
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused_with_the_fix(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ConfigError, match="reference_class='pkg.mod:Class'"):
        ref.load_reference(str(tmp_path / "module.pt"))


@pytest.mark.parametrize(
    "path, named",
    [
        ("tempfile:mkdtemp", "a function"),
        ("os:system", "a builtin_function_or_method"),
        ("collections:OrderedDict", "class OrderedDict"),
        ("os:sep", "a str"),
    ],
)
def test_a_class_path_that_is_not_a_module_class_is_refused_uncalled(monkeypatch, tmp_path, path, named):
    made = []
    monkeypatch.setattr("tempfile.mkdtemp", lambda *a, **k: made.append(a) or str(tmp_path))
    with pytest.raises(ConfigError, match="not a torch.nn.modules.module.Module subclass") as info:
        ref.load_reference(path)
    assert named in str(info.value) and made == []


def test_a_recipe_naming_a_function_as_reference_fails_preflight_without_calling_it(monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr("tempfile.mkdtemp", lambda *a, **k: made.append(a) or str(tmp_path))
    problems = preflight_problems([RhoLoss(reference="tempfile:mkdtemp")])
    assert any("reference='tempfile:mkdtemp' names a function" in p for p in problems), problems
    assert made == []


def test_reference_class_must_be_a_module_class(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ConfigError, match="reference_class='tempfile:mkdtemp' names a function"):
        ref.load_reference(str(tmp_path / "empty.pt"), reference_class="tempfile:mkdtemp")


def test_data_score_model_option_builds_a_module_class_and_never_calls_a_function(tmp_path):
    """`lightning-eff data score --model pkg:name` named a factory it called: `tempfile:mkdtemp` ran."""
    import tempfile

    from lightning_eff.plugins.data.scoring import load_reference_lm

    made = []
    real = tempfile.mkdtemp
    tempfile.mkdtemp = lambda *a, **k: made.append(1) or real(*a, **k)
    try:
        with pytest.raises(ConfigError, match="not a torch.nn.modules.module.Module subclass"):
            load_reference_lm("tempfile:mkdtemp")
    finally:
        tempfile.mkdtemp = real
    assert made == []
    lm = load_reference_lm("torch.nn:Identity")
    assert isinstance(lm.model, torch.nn.Identity) and not lm.model.training
    with pytest.raises(ConfigError, match="must build without arguments"):
        load_reference_lm("torch.nn:Linear")
