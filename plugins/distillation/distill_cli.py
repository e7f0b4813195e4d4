"""``lightning-eff distill cache``: store a teacher's top-k logits of every training sample (added by
the distillation plugin through ``leff_add_cli_commands``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

FIX = "a class path pkg.module:Class"


@click.group(help="Knowledge distillation helpers.")
def distill() -> None:
    pass


@distill.command("cache")
@click.option("--model", required=True, help="Student LightningModule (pkg.module:Class, built without arguments).")
@click.option("--data", required=True, help="LightningDataModule (pkg.module:Class, built without arguments); its training set is stored.")
@click.option("--teacher", required=True, help="Weights file (with --teacher-class), save_pretrained folder, or pkg.module:Class.")
@click.option("--teacher-class", default=None, help="Class the teacher weights load into.")
@click.option("--teacher-hparams", default=None, help="JSON object of the teacher class's constructor arguments.")
@click.option("--top-k", type=click.IntRange(min=1), default=8, show_default=True, help="Logits kept per sample (position).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--student-module", default=None, help="Submodule whose forward takes the teacher's inputs (default: the module).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a class-path teacher's initialisation.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def cache(model, data, teacher, teacher_class, teacher_hparams, top_k, batch_size, student_module, seed, out) -> None:
    """Run the teacher once over the training set and store its top-k logits, keyed by each sample's inputs.

    Train with KnowledgeDistillation(teacher_outputs=OUT): no teacher forward during training."""
    import lightning.pytorch as pl
    import torch

    from lightning_eff.errors import LightningEffError
    from lightning_eff.imports import import_subclass

    from .store import store_teacher_outputs
    from .teacher import load_teacher

    try:
        hparams = json.loads(teacher_hparams) if teacher_hparams else None
        if hparams is not None and not isinstance(hparams, dict):
            raise ValueError("--teacher-hparams must be a JSON object")
        student = import_subclass(model, torch.nn.Module, "--model", FIX)()
        datamodule = import_subclass(data, pl.LightningDataModule, "--data", FIX)()
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        from torch.utils.data import default_collate

        meta = {"model": model, "data": data, "teacher": teacher, "teacher_class": teacher_class, "teacher_hparams": hparams}
        folder = store_teacher_outputs(
            student, load_teacher(teacher, teacher_class, hparams, seed), loader.dataset, loader.collate_fn or default_collate,
            out, top_k, batch_size, student_module, meta=meta,
        )
    except (LightningEffError, ValueError, TypeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stored the teacher's top-{top_k} logits of {len(loader.dataset)} samples in {folder}")
