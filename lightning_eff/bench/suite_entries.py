"""What ``lightning-eff bench suite`` runs: every shipped recipe on the task and budget of the regime
its paper claims a gain in, Lightning's own callbacks beside ours, and the pairs that claim to compose.

Each entry is data (recipe, task, ``run_bench`` options); the suite runs them in this order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["technique", "peer", "composition"]


@dataclass(frozen=True)
class SuiteEntry:
    #: row label, and the folder its report goes to
    name: str
    #: a shipped recipe name, or a recipe mapping given inline (compositions; named after the entry)
    recipe: str | dict[str, Any]
    task: str
    #: ``run_bench`` keyword arguments: label_noise, epochs, max_steps, recipe_steps, tolerance...
    options: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "technique"
    #: the regime, in one line (shown on the results page)
    regime: str = ""
    #: entries this one is compared with on the results page (peers, composition parts)
    compare_with: tuple[str, ...] = ()


NOISY = {"label_noise": 0.3}

ENTRIES: tuple[SuiteEntry, ...] = (
    SuiteEntry(
        "quickstart", "quickstart", "finetune", {"recipe_steps": 2.0, "evals": 8, "flops": "inline"},
        regime="the demo: fine-tuning a pretrained MiniLM, frozen bottom cached, twice the (cheaper) steps",
    ),
    # pruning: long enough to recover
    SuiteEntry("gradual_pruning", "gradual_pruning", "lm", {"max_steps": 600}, regime="80% sparsity with a budget long enough to recover"),
    SuiteEntry("nm_sparsity", "nm_sparsity", "finetune", {"max_steps": 300}, regime="2:4 while fine-tuning a pretrained model, 300 steps (about six epochs) to recover"),
    SuiteEntry("structured_pruning", "structured_pruning", "finetune", regime="shrinks FFN neurons: the gain is inference speed (card)"),
    # freezing: while fine-tuning a pretrained model
    SuiteEntry("progressive_freezing", "progressive_freezing", "finetune", regime="fine-tuning a pretrained model"),
    SuiteEntry("freeze_out", "freeze_out", "finetune", regime="fine-tuning a pretrained model"),
    SuiteEntry("adaptive_freezing", "adaptive_freezing", "finetune", regime="fine-tuning a pretrained model"),
    SuiteEntry(
        "selective_finetuning", "selective_finetuning", "finetune", {"recipe_steps": 2.0},
        regime="fine-tuning a pretrained model, twice the (cheaper) steps",
    ),
    # parameter-efficient fine-tuning (needs the peft extra)
    SuiteEntry(
        "lora", "lora", "finetune", {"recipe_steps": 2.0},
        regime="fine-tuning a pretrained model with low-rank adapters, twice the (cheaper) steps",
        compare_with=("selective_finetuning",),
    ),
    # data: label noise, against the random-subset control at equal compute
    SuiteEntry("random_subset", "random_subset", "vision", NOISY, regime="the control: 30% label noise"),
    SuiteEntry("selective_backprop", "selective_backprop", "vision", NOISY, regime="30% label noise", compare_with=("random_subset",)),
    SuiteEntry("loss_threshold_skip", "loss_threshold_skip", "vision", NOISY, regime="30% label noise", compare_with=("random_subset",)),
    SuiteEntry("rho_loss", "rho_loss", "vision", NOISY, regime="30% label noise", compare_with=("random_subset",)),
    SuiteEntry("info_batch", "info_batch", "vision", {"epochs": 8}, regime="an epoch budget: pruned epochs are shorter"),
    # precision: CPU compute is not its target (cards say so); measured for quality and memory
    SuiteEntry("mixed_precision", "mixed_precision", "lm", regime="bf16 on CPU: not its target, quality and memory only"),
    SuiteEntry("float8_training", "float8_training", "lm", regime="a no-op on CPU (no fp8 hardware; layers below min_features): not its target"),
    SuiteEntry("low_precision_optimizer_states", "low_precision_optimizer_states", "lm", regime="optimizer memory"),
    SuiteEntry("moe_upcycling", "moe_upcycling", "lm", regime="upcycled at step 0 of an untrained model: not its regime (the card's two-stage benchmarks/moe_upcycling.py upcycles a trained dense model)"),
    # Lightning's own callbacks in the same harness
    SuiteEntry(
        "peer: ModelPruning", "peer_model_pruning", "lm", {"max_steps": 600}, kind="peer",
        regime="Lightning's ModelPruning at gradual_pruning's final sparsity", compare_with=("gradual_pruning",),
    ),
    SuiteEntry(
        "peer: BackboneFinetuning", "peer_backbone_finetuning", "finetune", kind="peer",
        regime="Lightning's BackboneFinetuning", compare_with=("progressive_freezing", "selective_finetuning"),
    ),
    # pairs that claim to compose
    SuiteEntry(
        "freezing + data", {
            "description": "selective fine-tuning (last 3 blocks) with Selective Backprop",
            "techniques": [
                {"name": "selective_finetuning", "options": {"train_last_blocks": 3}},
                {"name": "selective_backprop", "options": {"keep": 0.5, "start": 0.3, "end": 0.8}},
            ],
        }, "finetune", kind="composition", compare_with=("selective_finetuning", "selective_backprop"),
    ),
    SuiteEntry(
        "pruning + freezing", {
            "description": "gradual pruning to 50% with progressive freezing from 60% of training",
            "techniques": [
                {"name": "gradual_pruning", "options": {"final_sparsity": 0.5, "start": 0.1, "end": 0.6}},
                {"name": "progressive_freezing", "options": {"start": 0.6, "level": 0.75}},
            ],
        }, "finetune", kind="composition", compare_with=("gradual_pruning", "progressive_freezing"),
    ),
    SuiteEntry(
        "data + precision", {
            "description": "a random half of each batch with bf16 Adam moments",
            "techniques": [
                {"name": "random_subset", "options": {}},
                {"name": "low_precision_optimizer_states", "options": {}},
            ],
        }, "vision", NOISY, kind="composition", compare_with=("random_subset", "low_precision_optimizer_states"),
    ),
)


def entry_folder(name: str) -> str:
    """A folder name for an entry: letters, digits, '-', '_', '+'."""
    return "".join(c if c.isalnum() or c in "-_+" else "_" for c in name).strip("_")
