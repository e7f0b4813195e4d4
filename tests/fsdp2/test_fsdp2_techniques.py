"""Every built-in technique under FSDP2 with two CPU processes: the ranks agree on the gathered full
weights, optimizer state and technique state; stateful ones resume exactly from a sharded
checkpoint; the unsupported ones are refused in preflight with their reason."""

import pytest
import torch
from cases import DATA, FREEZING, MOE, PRECISION, PRUNING

from lightning_eff.testing_fsdp2 import ShardedTinyClassifier, assert_fsdp2_case_ok

pytestmark = pytest.mark.ddp

REFUSED = {
    "structured_pruning": "fine-tune the shrunk model under FSDP2",
    "low_precision_optimizer_states": "keep torch.optim.AdamW under FSDP2",
    "float8_training": "enable_fsdp_float8_all_gather",
    "freezing_cache_refused": "cache_activations=True cannot run under FSDP2",
}
WORKING = [c for c in DATA + FREEZING + PRUNING + PRECISION + MOE if c.name not in REFUSED]


def only_state(result):
    (state,) = result["techniques"].values()
    return state


@pytest.mark.parametrize("case", WORKING, ids=lambda c: c.name)
def test_ranks_agree_and_resume_is_exact(fsdp2_results, case):
    results, _ = fsdp2_results
    result = assert_fsdp2_case_ok(results[case.name], resume=case.resume_at is not None)
    assert result["global_step"] == case.max_steps


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_its_reason_before_training(fsdp2_results, name):
    results, _ = fsdp2_results
    for rank in results[name]:
        assert rank["error"] and rank["error"].startswith("PreflightError"), rank["error"]
        assert REFUSED[name] in rank["error"]


def test_data_selection_keeps_its_fraction_and_shares_scores(fsdp2_results):
    results, _ = fsdp2_results
    subset = only_state(results["random_subset"][0])
    assert subset["samples_kept"] * 2 == subset["samples_seen"] == 8 * 8
    assert only_state(results["selective_backprop"][0])["selected_batches"] == 4
    info = only_state(results["info_batch"][0])
    assert info["seen"].all() and info["samples_pruned"] > 0  # both ranks' losses reached both ranks
    rho = only_state(results["rho_loss"][0])
    assert int(rho["drop_counts"].sum()) == 2 * 2 * 4  # steps 2 and 3, both ranks, 4 of 8 dropped each


def initial_weights():
    torch.manual_seed(0)
    import lightning.pytorch as pl

    pl.seed_everything(0, workers=True)
    return ShardedTinyClassifier().state_dict()


def test_frozen_sharded_parameters_leave_the_optimizer_and_do_not_move(fsdp2_results):
    results, _ = fsdp2_results
    for name in ("progressive_freezing", "selective_finetuning", "adaptive_freezing", "freeze_out"):
        result = results[name][0]
        frozen = only_state(result)["frozen_blocks"]
        assert frozen == [0, 1, 2], name
        (optimizer,) = result["optimizer"]
        assert set(optimizer["state"]) == {"head.weight", "head.bias"}, name
    # selective_finetuning freezes before the first step: those weights never change
    trained = results["selective_finetuning"][0]["weights"]
    start = initial_weights()
    assert torch.equal(trained["blocks.0.0.weight"], start["blocks.0.0.weight"])
    assert not torch.equal(trained["head.weight"], start["head.weight"])


def test_pruning_masks_are_whole_on_every_rank_and_zero_the_sharded_weights(fsdp2_results):
    results, _ = fsdp2_results
    for name in ("gradual_pruning", "gradual_pruning_global_rewind"):
        result = results[name][0]
        masks = only_state(result)["masks"]
        assert masks and all(m.shape == result["weights"][f"{n}.weight"].shape for n, m in masks.items())
        for module, mask in masks.items():
            assert not result["weights"][f"{module}.weight"][~mask].any(), f"{name}: {module} has pruned weights"
        assert sum(int((~m).sum()) for m in masks.values()) == pytest.approx(
            0.5 * sum(m.numel() for m in masks.values()), abs=len(masks)
        )


def test_nm_sparsity_keeps_n_of_every_m_in_the_gathered_weights(fsdp2_results):
    results, _ = fsdp2_results
    result = results["nm_sparsity"][0]
    state = only_state(result)
    assert state["masks"]
    for module, mask in state["masks"].items():
        groups = mask.view(mask.shape[0], -1, 4)
        assert (groups.sum(-1) == 2).all(), module
        weight = result["weights"][f"{module}.weight"]
        assert not weight[~mask].any() and torch.equal(state["hidden"][module], state["hidden"][module] * ~mask)


def test_mixed_precision_and_moe_train_sharded(fsdp2_results):
    results, _ = fsdp2_results
    assert only_state(results["mixed_precision"][0])["overflow_steps"] == 0
    moe = results["moe_upcycling"][0]
    assert only_state(moe)["upcycled"] == ["model.model.layers.0.mlp", "model.model.layers.1.mlp"]
    assert any(".experts.3." in k for k in moe["weights"])
