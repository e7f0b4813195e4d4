"""KnowledgeDistillation: the loss it trains on, the teacher kept out of training, the schedule, metrics."""

import lightning.pytorch as pl
import pytest
import torch
from distill_helpers import TEACHER_CLASS, GradSpyTeacher, Teacher, save_teacher, student
from torch.nn import functional as F

from lightning_eff.plugins.distillation import KnowledgeDistillation
from lightning_eff.plugins.distillation.losses import kd_loss
from lightning_eff.testing import TinyDataModule, quiet_trainer_kwargs


def fit(techniques, max_steps=4, callbacks=(), module=None, **kwargs):
    pl.seed_everything(0)
    module = module or student()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=max_steps, **kwargs), callbacks=[*techniques, *callbacks])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


class LossSpy(pl.Callback):
    """The first step's batch, weights and the loss about to be backpropagated."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.batch = batch
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step == 0:
            self.loss = loss.detach().clone()


def test_training_loss_is_hintons_mixture_of_student_loss_and_scaled_kl(tmp_path):
    path = save_teacher(tmp_path)
    kd = KnowledgeDistillation(teacher=path, teacher_class=TEACHER_CLASS, alpha=0.3, temperature=2.5)
    spy = LossSpy()
    fit([kd], max_steps=1, callbacks=[spy])
    model, teacher = student(), Teacher()
    model.load_state_dict(spy.weights)
    teacher.load_state_dict(torch.load(path, weights_only=True))
    x, y = spy.batch
    with torch.no_grad():
        logits, teacher_logits = model(x), teacher(x)
        expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * kd_loss(logits, teacher_logits, 2.5)
    assert spy.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_loss_full_keeps_the_students_own_loss_at_weight_one(tmp_path):
    kd = KnowledgeDistillation(teacher=Teacher(), alpha=0.3, temperature=1.0, student_loss="full")
    spy = LossSpy()
    fit([kd], max_steps=1, callbacks=[spy])
    model = student()
    model.load_state_dict(spy.weights)
    x, y = spy.batch
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y) + 0.3 * kd_loss(model(x), kd.teacher(x), 1.0)
    assert spy.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_is_not_in_the_optimizer_nor_the_checkpoint_and_never_changes(tmp_path):
    path = save_teacher(tmp_path)
    kd = KnowledgeDistillation(teacher=path, teacher_class=TEACHER_CLASS)
    ckpt = tmp_path / "last.ckpt"

    class Save(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            trainer.save_checkpoint(ckpt)

    trainer, module = fit([kd], callbacks=[Save()])
    teacher_ids = {id(p) for p in kd.teacher.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert teacher_ids and not teacher_ids & optimised
    saved = torch.load(ckpt, weights_only=False)
    assert set(saved["state_dict"]) == set(module.state_dict())
    technique_state = next(v for k, v in saved["callbacks"].items() if "knowledge_distillation" in k)
    assert set(technique_state) == {"teacher_forwards"}
    assert all(not p.requires_grad for p in kd.teacher.parameters()) and not kd.teacher.training
    original = torch.load(path, weights_only=True)
    assert all(torch.equal(original[k], v) for k, v in kd.teacher.state_dict().items())


def test_teacher_runs_without_gradients_in_eval_mode_once_per_step():
    GradSpyTeacher.calls = []
    kd = KnowledgeDistillation(teacher=GradSpyTeacher())
    fit([kd], max_steps=3)
    assert len(GradSpyTeacher.calls) == 1 + 3  # the preflight probe, then one per step
    assert all(call == (False, False) for call in GradSpyTeacher.calls)
    assert kd.teacher_forwards == 3


def test_salt_schedule_distils_only_the_early_steps():
    GradSpyTeacher.calls = []
    weights = []

    class Weights(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights.append(kd.weight)

    kd = KnowledgeDistillation(teacher=GradSpyTeacher(), alpha=0.6, end=0.5)
    fit([kd], max_steps=6, callbacks=[Weights()])
    assert weights == [0.6, 0.6, 0.6, 0.0, 0.0, 0.0]
    assert kd.teacher_forwards == 3  # no teacher forward once the weight is 0


def test_metrics_report_the_weight_and_the_distillation_loss():
    kd = KnowledgeDistillation(teacher=Teacher(), alpha=0.4, decay="linear")
    fit([kd], max_steps=2)
    metrics = kd.metrics()
    assert metrics["weight"] == pytest.approx(0.4 * (1 - 1 / 2))
    assert metrics["loss"] > 0 and metrics["teacher_forwards"] == 2


def test_class_path_teacher_is_built_with_its_hparams_and_seed():
    kd = KnowledgeDistillation(teacher=TEACHER_CLASS, teacher_hparams={"hidden": 8}, seed=3)
    fit([kd], max_steps=1)
    assert kd.teacher.head.in_features == 8
    torch.manual_seed(3)
    assert torch.equal(Teacher(hidden=8).head.weight, kd.teacher.head.weight)


def test_lightning_checkpoint_teacher_loads_its_state_dict_and_hyperparameters(tmp_path):
    teacher = student()  # a LightningModule checkpoint: TinyClassifier(hidden=16, depth=2)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=1))
    trainer.fit(teacher, datamodule=TinyDataModule())
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    kd = KnowledgeDistillation(teacher=str(path), teacher_class="lightning_eff.testing:TinyClassifier")
    fit([kd], max_steps=1)
    assert kd.teacher.hparams.hidden == 16
    assert torch.equal(kd.teacher.head.weight, teacher.head.weight)


def test_bf16_teacher_runs_under_autocast_and_the_loss_stays_float32():
    kd = KnowledgeDistillation(teacher=Teacher(), teacher_precision="bf16")
    spy = LossSpy()
    fit([kd], max_steps=1, callbacks=[spy])
    assert spy.loss.dtype == torch.float32 and torch.isfinite(spy.loss)
    x, _ = spy.batch
    from lightning_eff.plugins.distillation.teacher import run_teacher

    assert run_teacher(kd.teacher, (x,), {}, "bf16").dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in kd.teacher.parameters())  # weights untouched
