"""Stored teacher outputs: `lightning-eff distill cache`, the validated folder, top-k KD read from it."""

import json

import lightning.pytorch as pl
import pytest
import torch
from click.testing import CliRunner
from distill_helpers import TEACHER_CLASS, Teacher

from lightning_eff.cli import cli
from lightning_eff.plugins.distillation import KnowledgeDistillation
from lightning_eff.plugins.distillation.losses import kd_loss
from lightning_eff.plugins.distillation.offline import TeacherOutputs, sparse_kd_loss
from lightning_eff.testing import TinyClassifier, TinyDataModule, preflight_problems, quiet_trainer_kwargs


def store(folder, top_k=4, data="lightning_eff.testing:TinyDataModule"):
    args = ["distill", "cache", "--model", "lightning_eff.testing:TinyClassifier", "--data", data,
            "--teacher", TEACHER_CLASS, "--seed", "3", "--top-k", str(top_k), "-o", str(folder)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return folder


def test_sparse_kd_with_every_class_is_the_full_kd():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    values, indices = teacher.topk(5, dim=-1)
    assert sparse_kd_loss(student, values, indices, 2.0).item() == pytest.approx(kd_loss(student, teacher, 2.0).item(), rel=1e-5)


def test_sparse_kd_renormalises_the_teachers_top_k_by_hand():
    student = torch.tensor([[0.0, 1.0, 2.0]])
    values, indices = torch.tensor([[3.0, 1.0]]), torch.tensor([[2, 0]])
    p = torch.softmax(values[0], 0)
    log_q = torch.log_softmax(student[0], 0)
    expected = (p * (p.log() - log_q[[2, 0]])).sum()
    assert sparse_kd_loss(student, values, indices, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cache_command_writes_arrays_then_an_index_that_validates(tmp_path):
    folder = store(tmp_path / "out", top_k=2)
    index = json.loads((folder / "index.json").read_text())
    assert index["samples"] == 64 and index["top_k"] == 2 and index["classes"] == 4 and index["sample_shape"] == []
    outputs = TeacherOutputs(folder)
    x = TinyDataModule().x
    torch.manual_seed(3)
    teacher = Teacher().eval()
    expected = teacher(x[:1]).topk(2, dim=-1)
    from lightning_eff.plugins.distillation.offline import sample_keys

    values, indices = outputs.lookup(sample_keys((x[:1],), {}))
    assert torch.equal(indices, expected.indices) and torch.allclose(values, expected.values, atol=1e-2)


def test_training_reads_the_stored_outputs_instead_of_running_a_teacher(tmp_path):
    folder = store(tmp_path / "out")  # top-4 of 4 classes: the full distribution (fp16)
    offline = KnowledgeDistillation(teacher_outputs=str(folder), alpha=0.5)
    online = KnowledgeDistillation(teacher=TEACHER_CLASS, seed=3, alpha=0.5)
    losses = []
    for kd in (offline, online):
        pl.seed_everything(0)
        trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=3), callbacks=[kd])
        trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
        losses.append(kd.last_loss)
    assert offline.teacher is None and offline.teacher_forwards == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)


def test_outputs_of_other_data_are_refused_before_training(tmp_path):
    folder = store(tmp_path / "out")
    kd = KnowledgeDistillation(teacher_outputs=str(folder))
    (problem,) = preflight_problems([kd], module=TinyClassifier(), data=TinyDataModule(seed=1))
    assert "are not in teacher_outputs" in problem and "rerun `lightning-eff distill cache`" in problem


def test_an_unfinished_or_tampered_folder_is_refused(tmp_path):
    folder = store(tmp_path / "out")
    (folder / "values.npy").write_bytes((folder / "values.npy").read_bytes()[:-8])
    (problem,) = preflight_problems([KnowledgeDistillation(teacher_outputs=str(folder))])
    assert "values.npy is missing or not the size its index records" in problem
    (folder / "index.json").unlink()
    (problem,) = preflight_problems([KnowledgeDistillation(teacher_outputs=str(folder))])
    assert "has no index.json" in problem


def test_teacher_and_teacher_outputs_together_are_refused(tmp_path):
    folder = store(tmp_path / "out")
    (problem,) = preflight_problems([KnowledgeDistillation(teacher=TEACHER_CLASS, teacher_outputs=str(folder))])
    assert "either teacher= or teacher_outputs=" in problem
