"""Built-in data techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl

from .info_batch import InfoBatch
from .info_batch_sampler import InfoBatchSampler, info_batch_dataloader
from .loss_threshold_skip import LossThresholdSkip
from .random_subset import RandomSubset
from .selective_backprop import SelectiveBackprop

__all__ = [
    "InfoBatch",
    "InfoBatchSampler",
    "LossThresholdSkip",
    "RandomSubset",
    "SelectiveBackprop",
    "info_batch_dataloader",
]


@hookimpl
def leff_register_techniques(register):
    register(SelectiveBackprop)
    register(RandomSubset)
    register(LossThresholdSkip)
    register(InfoBatch)
