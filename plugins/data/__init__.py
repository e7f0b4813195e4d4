"""Built-in data techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff.hookspecs import hookimpl
from lightning_eff.lazy import lazy_exports

# Imported on first use: discovering this plugin must not import Lightning (see lightning_eff.lazy).
_EXPORTS = {
    "FilteredDataModule": ".filtered",
    "IndexFilteredDataset": ".filtered",
    "filtered_datamodule": ".filtered",
    "InfoBatch": ".info_batch",
    "InfoBatchSampler": ".info_batch_sampler",
    "info_batch_dataloader": ".info_batch_sampler",
    "LossThresholdSkip": ".loss_threshold_skip",
    "RandomSubset": ".random_subset",
    "RhoLoss": ".rho_loss",
    "SelectiveBackprop": ".selective_backprop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def leff_register_techniques(register):
    from .info_batch import InfoBatch
    from .loss_threshold_skip import LossThresholdSkip
    from .random_subset import RandomSubset
    from .rho_loss import RhoLoss
    from .selective_backprop import SelectiveBackprop

    register(SelectiveBackprop)
    register(RandomSubset)
    register(LossThresholdSkip)
    register(InfoBatch)
    register(RhoLoss)


@hookimpl
def leff_add_cli_commands(cli):
    from .data_cli import data

    cli.add_command(data)
