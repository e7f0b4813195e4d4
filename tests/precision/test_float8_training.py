"""Float8Training: which layers convert, the explained no-op on CPU, emulated training, resume, preflight."""

import lightning.pytorch as pl
import pytest
import torch
from precision_helpers import WideNormClassifier

from lightning_eff.plugins.precision import Float8Training
from lightning_eff.plugins.precision import float8 as f8
from lightning_eff.testing import (
    TinyDataModule,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
)

# --- pure decisions -------------------------------------------------------------------------------


def test_layers_need_multiples_of_16_and_enough_size_to_gain():
    assert f8.float8_skip_reason(64, 64, min_features=16) is None
    assert "multiples of 16" in f8.float8_skip_reason(64, 4, min_features=16)
    assert "smaller than min_features=1024" in f8.float8_skip_reason(512, 4096, min_features=1024)


def test_plan_lists_every_skipped_layer_with_its_reason():
    converted, skipped = f8.plan_conversion(WideNormClassifier(), 16, include=(), exclude=("blocks.0.*",))
    assert converted == ["blocks.1.0", "blocks.2.0"]
    assert skipped == {"blocks.0.0": "excluded by exclude_names", "head": f8.float8_skip_reason(64, 4, 16)}


def test_cpu_has_no_float8_hardware():
    assert "no CUDA GPU" in f8.hardware_problem(torch.device("cpu"))


# --- training -------------------------------------------------------------------------------------


def fit(technique, steps=4):
    pl.seed_everything(0)
    module = WideNormClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[technique])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def test_on_cpu_it_is_an_explained_no_op(caplog):
    pytest.importorskip("torchao.float8")
    technique = Float8Training(min_features=16)
    with caplog.at_level("INFO"):
        _, module = fit(technique, steps=2)
    assert "float8_training is a no-op on this machine: no CUDA GPU" in caplog.text
    assert technique.metrics()["active"] == 0.0
    assert not any(type(m).__name__ == "Float8Linear" for m in module.modules())


def test_emulation_converts_eligible_layers_and_trains():
    pytest.importorskip("torchao.float8")
    technique = Float8Training(recipe="rowwise", min_features=16, emulate=True)
    _, module = fit(technique, steps=4)
    kinds = {name: type(m).__name__ for name, m in module.named_modules() if "Linear" in type(m).__name__}
    assert kinds == {"blocks.0.0": "Float8Linear", "blocks.1.0": "Float8Linear", "blocks.2.0": "Float8Linear",
                     "head": "Linear"}
    metrics = technique.metrics()
    assert metrics["converted_layers"] == 3 and metrics["skipped_layers"] == 1
    assert metrics["low_precision_linear_fraction"] == pytest.approx(0.75)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # the state dict keeps Linear's keys: a plain model loads it
    assert WideNormClassifier().load_state_dict(module.state_dict()) is not None


def float8_techniques():
    return [Float8Training(min_features=16, emulate=True)]


def test_resume_is_exact_with_emulated_float8(tmp_path):
    pytest.importorskip("torchao.float8")
    assert_resume_equivalent(WideNormClassifier, TinyDataModule, float8_techniques, half_steps=8, tmp_path=tmp_path)


# --- preflight ------------------------------------------------------------------------------------


def test_no_float8_hardware_is_refused_when_asked_to_fail():
    problems = preflight_problems([Float8Training(on_unsupported="error")], module=WideNormClassifier())
    assert any("cannot train in float8 here: no CUDA GPU" in p and "emulate=True" in p for p in problems)


def test_missing_torchao_names_the_install(monkeypatch):
    monkeypatch.setattr(f8.importlib.util, "find_spec", lambda name: None if name == "torchao" else object())
    problems = preflight_problems([Float8Training(emulate=True)], module=WideNormClassifier())
    assert any("pip install 'lightning-eff[precision]'" in p and "torchao" in p for p in problems)


def test_include_pattern_matching_no_linear_is_refused():
    problems = preflight_problems([Float8Training(include_names=["layers.*"], emulate=True)], module=WideNormClassifier())
    assert any("include_names pattern 'layers.*' matches no Linear" in p for p in problems)
