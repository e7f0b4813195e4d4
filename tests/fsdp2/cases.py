"""The FSDP2 cases of the whole suite, run in one two-process launch (see conftest.py).

Module-level factories: the spawned processes unpickle them by name."""

from data_helpers import InfoBatchData
from moe_models import TinyLlamaModule, TokenDataModule
from precision_helpers import NormClassifier
from torch.distributed.fsdp import fully_shard

from lightning_eff.plugins.data import InfoBatch, LossThresholdSkip, RandomSubset, RhoLoss, SelectiveBackprop
from lightning_eff.plugins.freezing import (
    AdaptiveFreezing,
    FreezeOut,
    ProgressiveFreezing,
    SelectiveFinetuning,
)
from lightning_eff.plugins.moe import MoEUpcycling
from lightning_eff.plugins.precision import Float8Training, LowPrecisionOptimizerStates, MixedPrecision
from lightning_eff.plugins.pruning import GradualPruning, NMSparsity, StructuredPruning
from lightning_eff.registry import get_registry
from lightning_eff.testing_fsdp2 import Fsdp2Case

#: the built-in families these cases and docs/scaling-out.md cover
FAMILIES = ("data", "distillation", "freezing", "moe", "peft", "precision", "pruning")


def family_techniques() -> dict:
    """Registered techniques of FAMILIES, by name (lightning_eff.plugins.<family>.<module>)."""
    return {
        name: cls for name, cls in get_registry().techniques.items()
        if cls.__module__.startswith(tuple(f"lightning_eff.plugins.{f}." for f in FAMILIES))
    }


def shard_layers(module, layers) -> None:
    mesh = module.device_mesh["data_parallel"]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)


class ShardedLlama(TinyLlamaModule):
    def configure_model(self):
        shard_layers(self, self.model.model.layers)


class EarlyShardedLlama(TinyLlamaModule):
    """Sharded in __init__, before trainer.fit: the wrong order for a surgery technique."""

    def __init__(self):
        super().__init__()
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2,))
        for layer in self.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def configure_model(self):
        pass  # ModelParallelStrategy requires the hook; the sharding happened above


class ShardedNorm(NormClassifier):
    def configure_model(self):
        shard_layers(self, self.blocks)


def no_technique(): return []
def random_subset(): return [RandomSubset(keep=0.5)]
def selective_backprop(): return [SelectiveBackprop(keep=0.5, start=0, end=1.0, interrupt=0)]
def loss_threshold_skip(): return [LossThresholdSkip(threshold=1.3)]
def info_batch(): return [InfoBatch(prune_ratio=0.5, anneal=0.2, seed=3)]
def rho_loss(): return [RhoLoss(keep=0.5, reference_steps=5, start=2)]
def progressive_freezing(): return [ProgressiveFreezing()]
def cached_freezing(): return [ProgressiveFreezing(cache_activations=True, static_data=True)]
def freeze_out(): return [FreezeOut()]
def adaptive_freezing(): return [AdaptiveFreezing(every=2, start=0)]
def selective_finetuning(): return [SelectiveFinetuning(train_last_blocks=1)]
def gradual_layer(): return [GradualPruning(final_sparsity=0.5, start=0, end=4, update_every=1)]
def gradual_global_rewind(): return [GradualPruning(final_sparsity=0.5, start=1, end=6, update_every=1, rewind_to=1, scope="global")]
def nm_sparsity(): return [NMSparsity(make_permanent=False)]
def structured_pruning(): return [StructuredPruning()]
def mixed_precision(): return [MixedPrecision()]
def int8_states(): return [LowPrecisionOptimizerStates(state_dtype="int8", min_numel=256, block_size=64)]
def float8(): return [Float8Training()]
def moe_upcycling(): return [MoEUpcycling(num_experts=4, top_k=1, every_n=1)]


CORE = [
    Fsdp2Case("baseline_sharded_resume", no_technique, max_steps=8, resume_at=4),
    Fsdp2Case("full_checkpoint_resume", random_subset, max_steps=8, resume_at=4,
              strategy_kwargs={"save_distributed_checkpoint": False}),
    Fsdp2Case("sharded_before_fit", moe_upcycling, make_module=EarlyShardedLlama, make_data=TokenDataModule, max_steps=2),
]
DATA = [
    Fsdp2Case("random_subset", random_subset, max_steps=8, resume_at=4),
    Fsdp2Case("selective_backprop", selective_backprop),
    Fsdp2Case("loss_threshold_skip", loss_threshold_skip),
    Fsdp2Case("info_batch", info_batch, make_data=InfoBatchData, max_steps=10),
    Fsdp2Case("rho_loss", rho_loss, make_data=InfoBatchData),
]
FREEZING = [
    Fsdp2Case("progressive_freezing", progressive_freezing, max_steps=8, resume_at=4),
    Fsdp2Case("freezing_cache_refused", cached_freezing, make_data=InfoBatchData),
    Fsdp2Case("freeze_out", freeze_out, max_steps=8),
    Fsdp2Case("adaptive_freezing", adaptive_freezing, max_steps=12),
    Fsdp2Case("selective_finetuning", selective_finetuning),
]
PRUNING = [
    Fsdp2Case("gradual_pruning", gradual_layer, max_steps=6),
    Fsdp2Case("gradual_pruning_global_rewind", gradual_global_rewind, max_steps=8, resume_at=4),
    Fsdp2Case("nm_sparsity", nm_sparsity, max_steps=8, resume_at=4),
    Fsdp2Case("structured_pruning", structured_pruning),
]
PRECISION = [
    Fsdp2Case("mixed_precision", mixed_precision, make_module=ShardedNorm, trainer_kwargs={"precision": "bf16-mixed"}),
    Fsdp2Case("low_precision_optimizer_states", int8_states, make_module=ShardedNorm),
    Fsdp2Case("float8_training", float8, make_module=ShardedNorm),
]
MOE = [
    Fsdp2Case("moe_upcycling", moe_upcycling, make_module=ShardedLlama, make_data=TokenDataModule, max_steps=3),
]
ALL_CASES = CORE + DATA + FREEZING + PRUNING + PRECISION + MOE
