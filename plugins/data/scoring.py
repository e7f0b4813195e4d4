"""Per-sample perplexity and IFD with a small reference causal LM (Superfiltering: a weak model's
scores are good enough to filter the data of a strong one).

- **perplexity** of a text: ``exp`` of the mean negative log-likelihood of its tokens;
- **IFD** (instruction-following difficulty, Li et al. 2023): ``PPL(response | prompt) / PPL(response)``,
  both over the response tokens only. Near or above 1, the prompt does not help predict the response
  (a mismatched or trivial pair); the lower, the more the response follows from the instruction.

The default reference is a tiny byte-level ``transformers.LlamaForCausalLM`` built from a config and
trained briefly on the text being scored (no download, no tokenizer): typical text gets a low
perplexity, junk (random characters, boilerplate noise) a high one. A user model is
``pkg.module:factory`` returning a causal LM over bytes (vocabulary >= 257, token 256 begins a text),
or a pair ``(model, encode)`` with ``encode(text) -> list[int]``; or a local folder written by
``save_pretrained`` (with its tokenizer when the folder has one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from lightning_eff.errors import ConfigError, require

BOS = 256  # begins every byte-level text: the first byte gets a prediction too
BYTE_VOCAB = 257


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@dataclass
class ReferenceLM:
    """A causal LM and its text encoder; ``bos`` (if any) is put before every sequence."""

    model: torch.nn.Module
    encode: Callable[[str], list[int]] = encode_bytes
    bos: int | None = BOS
    name: str = "byte-level"

    def prefix(self) -> list[int]:
        return [] if self.bos is None else [self.bos]


def tiny_byte_lm(hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 256, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised byte-level ``LlamaForCausalLM`` (vocabulary 257)."""
    transformers = require("transformers", "perplexity scoring", extra="hf")
    config = transformers.LlamaConfig(
        vocab_size=BYTE_VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(config)


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out


def train_byte_lm(
    model: torch.nn.Module,
    texts: Sequence[str],
    steps: int = 300,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.nn.Module:
    """Train on random windows of the texts joined by newlines (each text also starts with BOS)."""
    stream: list[int] = []
    for text in texts:
        stream += [BOS, *encode_bytes(text), 10]
    data = torch.tensor(stream, dtype=torch.long)
    if data.numel() < 2:
        raise ConfigError("the reference corpus holds no text to train on")
    seq_len = min(seq_len, data.numel() - 1)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        for _ in range(steps):
            starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=g)
            window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
            logits = _logits(model, window[:, :-1], torch.ones_like(window[:, :-1]))
            loss = F.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(1)
    return model.eval()


@torch.no_grad()
def mean_nll(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Mean negative log-likelihood of the tokens ``sequence[start:]`` of every sequence (each token
    predicted from those before it); NaN when there is no such token (``start >= len`` or ``start < 1``
    and nothing else)."""
    model.eval()
    device = next(model.parameters()).device
    out = [math.nan] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths batch together
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        if width < 2:
            if progress is not None:
                progress(len(chunk))
            continue
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        counted = torch.zeros(len(chunk), width - 1)
        for row, i in enumerate(chunk):
            seq = sequences[i]
            ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, : len(seq)] = 1
            first = max(1, starts[i])
            if first < len(seq):
                counted[row, first - 1 : len(seq) - 1] = 1.0  # predicting token t uses position t-1
        logits = _logits(model, ids.to(device), mask.to(device)).float().cpu()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(len(chunk), -1)
        sums, counts = (nll * counted).sum(1), counted.sum(1)
        for row, i in enumerate(chunk):
            if counts[row] > 0:
                out[i] = float(sums[row] / counts[row])
        if progress is not None:
            progress(len(chunk))
    return out


def perplexities(
    lm: ReferenceLM, texts: Sequence[str], max_len: int = 256, batch_size: int = 16, progress=None
) -> list[float]:
    """Perplexity of each text (its first ``max_len`` tokens, BOS included)."""
    seqs = [(lm.prefix() + lm.encode(t))[:max_len] for t in texts]
    nll = mean_nll(lm.model, seqs, [1] * len(seqs), batch_size, progress)
    return [math.exp(v) if not math.isnan(v) else math.nan for v in nll]


def ifd_scores(
    lm: ReferenceLM,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_len: int = 256,
    batch_size: int = 16,
    progress=None,
) -> tuple[list[float], list[float], list[float]]:
    """``(ifd, conditional perplexity, response perplexity)`` of each prompt/response pair.

    The response keeps its first ``max_len - 1`` tokens; the prompt its last ones that still fit."""
    cond, uncond, starts = [], [], []
    for prompt, response in zip(prompts, responses):
        r = lm.encode(response)[: max_len - 1 - len(lm.prefix()) + 1]
        room = max(0, max_len - len(lm.prefix()) - len(r))
        p = lm.encode(prompt)
        p = p[len(p) - room :] if room else []
        cond.append(lm.prefix() + p + r)
        starts.append(len(lm.prefix()) + len(p))
        uncond.append(lm.prefix() + r)
    half = (lambda n: progress(n / 2)) if progress is not None else None
    c = mean_nll(lm.model, cond, starts, batch_size, half)
    u = mean_nll(lm.model, uncond, [1] * len(uncond), batch_size, half)
    ppl_c = [math.exp(v) if not math.isnan(v) else math.nan for v in c]
    ppl_u = [math.exp(v) if not math.isnan(v) else math.nan for v in u]
    ifd = [math.exp(a - b) if not (math.isnan(a) or math.isnan(b)) else math.nan for a, b in zip(c, u)]
    return ifd, ppl_c, ppl_u


def load_reference_lm(spec: str) -> ReferenceLM:
    """A user's reference LM: ``pkg.module:ModelClass`` (a byte-level causal LM built without
    arguments) or a local ``save_pretrained`` folder."""
    path = Path(spec)
    if path.is_dir():
        transformers = require("transformers", "perplexity scoring", extra="hf")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        has_tokenizer = any((path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
        if has_tokenizer:
            tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            return ReferenceLM(model.eval(), lambda t: tok.encode(t, add_special_tokens=False), tok.bos_token_id, str(path))
        return ReferenceLM(model.eval(), name=str(path))
    from .reference import import_class

    # An import path names a class, built here without arguments; a function is refused uncalled
    # (issue 15: `tempfile:mkdtemp` used to be called). A model with its own tokenizer: a folder.
    cls = import_class(spec, torch.nn.Module, "--model")
    try:
        model = cls()
    except TypeError as exc:
        raise ConfigError(f"--model {spec!r}: {cls.__qualname__}() must build without arguments ({exc})") from None
    return ReferenceLM(model.eval(), name=spec)
