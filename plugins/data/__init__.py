"""Built-in data techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl

from .filtered import FilteredDataModule, IndexFilteredDataset, filtered_datamodule
from .info_batch import InfoBatch
from .info_batch_sampler import InfoBatchSampler, info_batch_dataloader
from .loss_threshold_skip import LossThresholdSkip
from .random_subset import RandomSubset
from .rho_loss import RhoLoss
from .selective_backprop import SelectiveBackprop

__all__ = [
    "FilteredDataModule",
    "IndexFilteredDataset",
    "InfoBatch",
    "InfoBatchSampler",
    "LossThresholdSkip",
    "RandomSubset",
    "RhoLoss",
    "SelectiveBackprop",
    "filtered_datamodule",
    "info_batch_dataloader",
]


@hookimpl
def leff_register_techniques(register):
    register(SelectiveBackprop)
    register(RandomSubset)
    register(LossThresholdSkip)
    register(InfoBatch)
    register(RhoLoss)


@hookimpl
def leff_add_cli_commands(cli):
    from .data_cli import data

    cli.add_command(data)
