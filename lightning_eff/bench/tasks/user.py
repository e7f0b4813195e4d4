"""The user's own task: ``--model pkg.module:MyModule --data pkg.module:MyDataModule``.

Both classes are built without arguments (give them defaults), once per run after the seed is set.
The module should mix in ``lightning_eff.EfficientModule`` for data techniques, log ``--metric`` in
``validation_step``, and use a learning-rate schedule that decays to 0 at ``trainer.max_steps``
(the report warns when the last learning rate is not near 0).
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl

from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.errors import ConfigError
from lightning_eff.imports import import_attribute


def import_object(path: str, option: str, kind: type) -> type:
    """``pkg.module:Name`` (or ``pkg.module.Name``) -> the class, checked to be a ``kind`` subclass."""
    example = f"{option} my_package.my_module:My{kind.__name__.replace('Lightning', '')}"
    _import_from_working_directory()
    try:
        obj = import_attribute(path, option, example)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (looked in the working directory {os.getcwd()} and the installed packages)") from None
    if not (isinstance(obj, type) and issubclass(obj, kind)):
        raise ConfigError(f"{option} {path!r} is not a {kind.__module__.split('.')[0]} {kind.__name__} subclass")
    return obj


def _import_from_working_directory() -> None:
    """``--model cli_app:Net`` names a module in the current directory, as ``python -m`` would find it.
    The console script does not put the working directory on ``sys.path``; it goes last, so a file
    there never shadows an installed distribution."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or ".") == here for entry in sys.path):
        sys.path.append(here)


def user_task(model: str, data: str, metric: str = "val/loss", higher_is_better: bool = False, max_steps: int = 200) -> BenchTask:
    module_cls = import_object(model, "--model", pl.LightningModule)
    data_cls = import_object(data, "--data", pl.LightningDataModule)
    return BenchTask(
        name=f"{module_cls.__name__} on {data_cls.__name__}",
        description=f"user task {model} with {data}",
        make_module=module_cls,
        make_data=data_cls,
        metric=metric,
        higher_is_better=higher_is_better,
        default_max_steps=max_steps,
        details={"model": model, "data": data},
    )
