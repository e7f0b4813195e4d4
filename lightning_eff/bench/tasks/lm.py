"""``lm``: a tiny randomly initialised ``LlamaForCausalLM`` trained byte-level on Python's own text.

The corpus ships with every Python: the standard library's top-level ``.py`` sources and the help
topics of ``pydoc_data``. Documents (files, topics) are taken in sorted order; every tenth document
is held out for validation, so validation text is text the model never trained on. Bytes are the
tokens (vocabulary 256): no tokenizer, no download. Quality is the validation loss in nats per
byte (perplexity = exp(loss)), lower is better.

A transformers Llama (not a home-made transformer) so that MoE upcycling can turn its MLPs into a
transformers Mixtral and freezing finds the standard ``model.model.layers``.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from lightning_eff.bench.tasks.base import BenchModule, BenchTask
from lightning_eff.errors import require

VOCAB = 256
VAL_EVERY_NTH_DOCUMENT = 10
TRAIN_BYTES, VAL_BYTES = 1_000_000, 32_000
# Sized so a step is compute, not overhead (trainer + hub within 5% of a plain loop) and a 300-step
# baseline trains for more than 30 s on a 2-core CPU: docs/benchmarking.md has the measurement.
SEQ_LEN, BATCH_SIZE = 128, 16
HIDDEN, INTERMEDIATE, LAYERS, HEADS = 256, 512, 2, 4


def corpus_documents() -> list[tuple[str, bytes]]:
    """(name, text) of every document, in a deterministic order."""
    docs = []
    try:
        from pydoc_data.topics import topics

        docs += [(f"pydoc_data.topics[{k}]", topics[k].encode("utf-8")) for k in sorted(topics)]
    except ImportError:  # some distributions strip pydoc_data; the sources suffice
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs += [(p.name, p.read_bytes()) for p in sorted(stdlib.glob("*.py"))]
    return docs


@functools.lru_cache(maxsize=4)
def byte_windows(seq_len: int, train_bytes: int, val_bytes: int) -> dict[str, Any]:
    """Non-overlapping windows of ``seq_len + 1`` bytes (inputs and shifted targets) per split."""
    splits: dict[str, list[bytes]] = {"train": [], "val": []}
    budget = {"train": train_bytes, "val": val_bytes}
    names: dict[str, list[str]] = {"train": [], "val": []}
    for i, (name, text) in enumerate(corpus_documents()):
        split = "val" if i % VAL_EVERY_NTH_DOCUMENT == 0 else "train"
        if budget[split] <= 0:
            continue
        text = text[: budget[split]]
        budget[split] -= len(text)
        splits[split].append(text)
        names[split].append(name)
    out: dict[str, Any] = {"documents": names}
    for split, texts in splits.items():
        data = torch.frombuffer(bytearray(b"\n".join(texts)), dtype=torch.uint8).long()
        windows = len(data) // (seq_len + 1)
        out[split] = data[: windows * (seq_len + 1)].view(windows, seq_len + 1)
    return out


class ByteTextDataModule(pl.LightningDataModule):
    def __init__(self, seq_len: int = SEQ_LEN, batch_size: int = BATCH_SIZE, train_bytes: int = TRAIN_BYTES, val_bytes: int = VAL_BYTES) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.windows = byte_windows(seq_len, train_bytes, val_bytes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.windows["train"], batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.windows["val"], batch_size=64)


class TinyLlamaLM(BenchModule):
    """``self.model`` is a ``transformers.LlamaForCausalLM`` with random init (byte vocabulary)."""

    def __init__(
        self,
        hidden: int = HIDDEN,
        layers: int = LAYERS,
        heads: int = HEADS,
        intermediate: int = INTERMEDIATE,
        seq_len: int = SEQ_LEN,
        lr: float = 2e-3,
    ) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        transformers = require("transformers", "the 'lm' bench task", extra="tasks")
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=seq_len,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        config._attn_implementation = "sdpa"
        self.model = transformers.LlamaForCausalLM(config)
        self.val_loss = MeanMetric()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def token_losses(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none").view(batch.shape[0], -1)

    def per_sample_loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.token_losses(batch).mean(dim=1)  # fixed-length windows: no padding to ignore

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        losses = self.token_losses(batch)
        self.val_loss.update(losses.mean(), weight=losses.numel())
        self.log("val/loss", self.val_loss, on_epoch=True, batch_size=batch.shape[0])


def count_tokens(batch: torch.Tensor) -> int:
    return int(batch[:, 1:].numel())


def lm_task(seq_len: int = SEQ_LEN, batch_size: int = BATCH_SIZE) -> BenchTask:
    windows = byte_windows(seq_len, TRAIN_BYTES, VAL_BYTES)
    return BenchTask(
        name="lm",
        description="tiny Llama (random init) on stdlib sources + pydoc topics, byte-level",
        make_module=lambda: TinyLlamaLM(seq_len=seq_len),
        make_data=lambda: ByteTextDataModule(seq_len=seq_len, batch_size=batch_size),
        metric="val/loss",
        higher_is_better=False,
        default_max_steps=300,
        default_repeats=3,
        count_tokens=count_tokens,
        details={
            "corpus": "stdlib *.py + pydoc_data.topics, every 10th document held out",
            "train_windows": len(windows["train"]),
            "val_windows": len(windows["val"]),
            "train_documents": len(windows["documents"]["train"]),
            "val_documents": len(windows["documents"]["val"]),
            "seq_len": seq_len,
            "batch_size": batch_size,
            "model": f"Llama hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, MLP {INTERMEDIATE}",
        },
    )
