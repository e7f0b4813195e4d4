"""The teacher's forward is counted by the bench's FLOP meter; teachers from a transformers directory."""

import lightning.pytorch as pl
import pytest
import torch
from distill_helpers import Teacher, student

from lightning_eff import ConfigError
from lightning_eff.bench.flops import FlopMeter
from lightning_eff.plugins.distillation import KnowledgeDistillation
from lightning_eff.plugins.distillation.teacher import load_teacher, logits_of
from lightning_eff.testing import TinyDataModule, quiet_trainer_kwargs


def counted(techniques, steps=2):
    pl.seed_everything(0)
    meter = FlopMeter()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=meter.around(techniques))
    trainer.fit(student(), datamodule=TinyDataModule())
    return meter.counter


def test_teacher_forwards_count_as_forward_flops_of_the_run():
    plain, distilled = counted([]), counted([KnowledgeDistillation(teacher=Teacher())])
    teacher = 2 * (16 * 48 + 48 * 48 + 48 * 4)  # per sample: the teacher's three Linear layers
    student_ = 2 * (16 * 16 + 16 * 16 + 16 * 4)
    batch, steps, probe = 8, 2, 2  # and the preflight probe: student and teacher on 2 samples
    assert distilled.forward - plain.forward == teacher * (batch * steps + probe) + student_ * probe
    assert distilled.backward == plain.backward  # nothing flows back through the teacher


def test_transformers_directory_teacher_loads_frozen_with_its_class(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path), "transformers:LlamaForCausalLM", None, 0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert logits_of(teacher(input_ids=torch.tensor([[1, 2, 3]]))).shape == (1, 3, 32)
    with pytest.raises(ConfigError, match="name its transformers class"):
        load_teacher(str(tmp_path), None, None, 0)
    with pytest.raises(ConfigError, match="PreTrainedModel subclass"):
        load_teacher(str(tmp_path), "distill_helpers:Teacher", None, 0)


def test_logits_are_found_in_tensors_mappings_tuples_and_model_outputs():
    logits = torch.zeros(2, 3)

    class Output:
        def __init__(self):
            self.logits = logits

    for output in (logits, {"logits": logits}, (logits, None), Output()):
        assert logits_of(output) is logits
    with pytest.raises(TypeError, match="cannot find logits"):
        logits_of("text")
