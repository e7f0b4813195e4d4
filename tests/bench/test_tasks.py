"""Each embedded task trains for a few steps through the harness and its quality metric moves."""

import pytest
from bench_techniques import EMPTY

from lightning_eff.bench.runner import RunPlan, run_once
from lightning_eff.bench.tasks import get_task
from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.errors import ConfigError
from lightning_eff.recipe import load_recipe


def train(task: BenchTask, steps: int):
    plan = RunPlan(task=task, recipe=load_recipe(EMPTY), max_steps=steps, eval_every=steps, accelerator="cpu", progress_bar=False)
    return run_once(plan, "baseline", repeat=0, seed=0)


def test_vision_accuracy_rises_from_chance():
    run = train(get_task("vision"), steps=25)
    before, after = run.curve[0].quality, run.curve[-1].quality
    assert before < 0.3 and after > before + 0.3


def test_vision_label_noise_flips_only_training_labels():
    from lightning_eff.bench.tasks.vision import digits_splits

    clean, noisy = digits_splits(0.0), digits_splits(0.3)
    flipped = (noisy["y_train"] != clean["y_train"]).sum().item()
    assert flipped == round(0.3 * len(clean["y_train"]))
    assert (noisy["y_val"] == clean["y_val"]).all()
    assert (noisy["y_train_clean"] == clean["y_train"]).all()


def test_vision_model_exposes_blocks_and_linear_layers():
    from torch import nn

    module = get_task("vision").make_module()
    assert len(module.blocks) == 4  # three conv stages, then the MLP stage
    assert any(isinstance(m, nn.Linear) for m in module.blocks.modules())
    assert sum(p.numel() for p in module.parameters()) < 200_000  # small enough not to memorise noisy labels


def test_vision_step_is_conv_compute_on_upsampled_digits():
    import torch

    from lightning_eff.bench.tasks.vision import DigitsCNN

    module = get_task("vision").make_module()
    first_conv_input = []
    module.blocks[0][1].register_forward_hook(lambda m, args, out: first_conv_input.append(args[0].shape))
    module(torch.zeros(2, 1, 8, 8))
    assert first_conv_input == [torch.Size([2, 1, 32, 32])]
    assert DigitsCNN(resolution=8)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # the native size still works
    with pytest.raises(ConfigError, match="multiple of the digits' 8 pixels"):
        DigitsCNN(resolution=12)


def test_lm_validation_loss_falls():
    from lightning_eff.bench.tasks.lm import BATCH_SIZE, SEQ_LEN

    run = train(get_task("lm"), steps=8)
    assert run.curve[-1].quality < run.curve[0].quality - 0.3  # nats per byte; starts near ln(256) = 5.5
    assert run.tokens == 8 * BATCH_SIZE * SEQ_LEN and run.tokens_per_second > 0


def test_lm_is_a_transformers_llama_and_validation_documents_are_held_out():
    from transformers import LlamaForCausalLM

    from lightning_eff.bench.tasks.lm import SEQ_LEN, TRAIN_BYTES, VAL_BYTES, byte_windows

    task = get_task("lm")
    assert isinstance(task.make_module().model, LlamaForCausalLM)
    docs = byte_windows(SEQ_LEN, TRAIN_BYTES, VAL_BYTES)["documents"]
    assert docs["val"] and docs["train"] and not set(docs["val"]) & set(docs["train"])


@pytest.mark.slow
def test_finetune_accuracy_rises():
    from lightning_eff.bench.tasks.finetune import MiniLMClassifier

    task = get_task("finetune")
    task.make_module = lambda: MiniLMClassifier(lr=3e-4)  # a few steps must move it
    run = train(task, steps=8)
    assert run.curve[-1].quality > run.curve[0].quality + 0.1


def test_finetune_labels_are_balanced_and_validation_texts_unseen():
    from lightning_eff.bench.tasks.finetune import PACKAGES, package_docstrings

    for package in PACKAGES:
        docs = package_docstrings(package)
        assert len(docs) == len(set(docs)) >= 100, package
    split_of = {}
    for package in PACKAGES:
        for i, doc in enumerate(package_docstrings(package)):
            split_of.setdefault(doc, set()).add("val" if i % 5 == 0 else "train")
    assert all(len(s) == 1 for s in split_of.values())  # no docstring is in both splits


def test_finetune_is_ready_for_activation_caching():
    """The demo recipe needs: static data, sample indices from the sampler, no dropout below the
    last encoder layer (the same model in both arms)."""
    from torch import nn

    from lightning_eff.plugins.data import InfoBatchSampler

    task = get_task("finetune")
    data, module = task.make_data(), task.make_module()
    assert data.static_data is True
    assert isinstance(data.train_dataloader().sampler, InfoBatchSampler)
    layers = module.model.bert.encoder.layer
    below = [m for block in [module.model.bert.embeddings, *layers[:-1]] for m in block.modules() if isinstance(m, nn.Dropout)]
    assert below and all(m.p == 0.0 for m in below)
    assert any(m.p > 0 for m in layers[-1].modules() if isinstance(m, nn.Dropout)), "the last layer keeps its dropout"


def test_the_demo_recipe_caches_the_frozen_bottom_of_finetune():
    from lightning_eff.bench.harness import run_bench

    result = run_bench(task="finetune", recipe="quickstart", quick=True, quiet=True, flops="inline", evals=2)
    baseline, recipe = result.runs
    assert recipe.frozen_fraction > 0.8 and baseline.frozen_fraction == 0.0
    assert recipe.backward_flops < 0.5 * baseline.backward_flops  # no backward below layer 4
