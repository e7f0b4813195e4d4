"""FSDP2 in the core: the strategy kind, the declarations, the surgery-before-sharding order, and
checkpoints (sharded resume exact, full checkpoints loading into one process)."""

import lightning.pytorch as pl
import pytest
import torch
from cases import ALL_CASES, CORE, family_techniques

from lightning_eff.fsdp2_checkpoint import consolidate_fsdp2_checkpoint
from lightning_eff.plan import STRATEGY_KINDS, strategy_kind
from lightning_eff.sharding import full_value, gather_full, is_sharded, local_part, local_value
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs
from lightning_eff.testing_fsdp2 import assert_fsdp2_case_ok, fsdp2_strategy


def test_model_parallel_strategy_is_fsdp2_unless_it_has_a_tensor_parallel_mesh():
    from lightning.pytorch.strategies import ModelParallelStrategy

    assert strategy_kind(fsdp2_strategy()) == "fsdp2"
    assert strategy_kind(ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)) == "tensor_parallel"
    assert {"fsdp2", "tensor_parallel"} <= set(STRATEGY_KINDS)


def test_every_technique_declares_fsdp2_or_says_why_not():
    techniques = family_techniques()
    assert len(techniques) == 19
    for name, cls in techniques.items():
        assert cls.supported_strategies is not None, f"{name} must declare supported_strategies"
        assert set(cls.supported_strategies) <= set(STRATEGY_KINDS), name
        if "fsdp2" not in cls.supported_strategies:
            assert len(cls.strategy_refusals.get("fsdp2", "")) > 40, f"{name} refuses fsdp2 without a reason"


def test_every_technique_declared_for_fsdp2_has_a_two_process_case():
    tested = {t.name for case in ALL_CASES for t in case.make_techniques()}
    declared = {n for n, cls in family_techniques().items() if "fsdp2" in cls.supported_strategies}
    assert declared <= tested, f"declared for fsdp2 without a case in tests/fsdp2/cases.py: {declared - tested}"


def test_sharding_helpers_pass_plain_tensors_through():
    t = torch.arange(6.0).view(2, 3)
    assert not is_sharded(t)
    assert full_value(t) is t and local_value(t) is t and local_part(t, t) is t
    assert gather_full({"a": [t], "b": 1})["a"][0].equal(t)


# -- the shared two-process launch (tests/fsdp2/conftest.py) ----------------------------------------


@pytest.mark.ddp
def test_sharded_checkpoint_resumes_exactly(fsdp2_results):
    results, _ = fsdp2_results
    result = assert_fsdp2_case_ok(results["baseline_sharded_resume"], resume=True)
    assert "meta.pt" in result["checkpoint_files"] and any(f.endswith(".distcp") for f in result["checkpoint_files"])


@pytest.mark.ddp
def test_surgery_refuses_a_model_sharded_before_fit(fsdp2_results):
    results, _ = fsdp2_results
    for rank in results["sharded_before_fit"]:
        assert "moe_upcycling changes modules or parameters in setup" in rank["error"]
        assert "call fully_shard inside LightningModule.configure_model" in rank["error"]


def single_process_load(path):
    """Resume a plain (unsharded) TinyClassifier in one process; it stops at once (max_steps reached)."""
    module = TinyClassifier()
    techniques = CORE[1].make_techniques()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=4), callbacks=techniques)
    trainer.fit(module, datamodule=TinyDataModule(), ckpt_path=path)
    return module, techniques[0], trainer


@pytest.mark.ddp
def test_full_checkpoint_resumes_exactly_and_loads_into_one_process(fsdp2_results):
    results, folder = fsdp2_results
    assert_fsdp2_case_ok(results["full_checkpoint_resume"], resume=True)
    path = folder / "full_checkpoint_resume.ckpt"
    assert path.is_file()  # save_distributed_checkpoint=False: one file written by rank 0
    saved = torch.load(path, weights_only=False)
    module, technique, trainer = single_process_load(path)
    assert trainer.global_step == 4
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved["state_dict"].items())
    assert technique.samples_seen == 4 * 8  # the technique's state came back too


@pytest.mark.ddp
def test_sharded_checkpoint_consolidates_into_one_process_checkpoint(fsdp2_results, tmp_path):
    results, folder = fsdp2_results
    checkpoint = consolidate_fsdp2_checkpoint(folder / "baseline_sharded_resume.ckpt")
    assert checkpoint["global_step"] == 4
    path = tmp_path / "full.ckpt"
    torch.save(checkpoint, path)
    module = TinyClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=6))
    trainer.fit(module, datamodule=TinyDataModule(), ckpt_path=path)  # weights and optimizer state load
    assert trainer.global_step == 6
    assert set(trainer.optimizers[0].state_dict()["state"]) == set(range(len(list(module.parameters()))))
