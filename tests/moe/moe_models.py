"""Tiny models and data for the MoE tests (module level: DDP workers import them by name)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_eff.module import EfficientModule
from lightning_eff.testing import EpochSeededSampler

VOCAB = 64


def llama_config(**overrides):
    import transformers  # imported here: transformers is an optional extra

    kwargs = {
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


def tiny_llama(seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(llama_config(**overrides)).eval()


def tiny_decoder(family: str, seed: int = 0):
    """A tiny causal LM of another SwiGLU family (``Mistral``, ``Qwen2``) with the Llama test sizes."""
    import transformers

    kwargs = llama_config().to_dict()
    kwargs = {k: kwargs[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads")}
    config = getattr(transformers, f"{family}Config")(**kwargs, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return getattr(transformers, f"{family}ForCausalLM")(config).eval()


def tiny_bert(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config._attn_implementation = "eager"
    return transformers.BertModel(config).eval()


class TinyLlamaModule(EfficientModule, pl.LightningModule):
    """A tiny transformers Llama; per-sample loss = mean next-token cross-entropy of the sample."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.model = tiny_llama(seed=0)
        self.model.train()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits

    def per_sample_loss(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self(batch[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        return losses.view(batch.shape[0], -1).mean(dim=1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)


class TokenDataModule(pl.LightningDataModule):
    """Random token windows with a learnable pattern (every other token repeats), deterministic."""

    def __init__(self, samples: int = 32, seq_len: int = 9, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, VOCAB, (samples, seq_len), generator=g)
        ids[:, 1::2] = ids[:, 0::2][:, : ids[:, 1::2].shape[1]]
        self.ids, self.batch_size, self.seed = ids, batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return len(self.ids) // self.batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.ids, batch_size=self.batch_size, sampler=EpochSeededSampler(len(self.ids), self.seed), drop_last=True)
