"""Offline teacher outputs: the teacher's top-k logits of every training sample, stored once and read
instead of running the teacher (Sparse/"top-k" KD: the teacher's distribution renormalised over its
k largest logits, as LLM distillation pipelines store it).

A folder holds memory-mapped ``.npy`` arrays, written first, and ``index.json``, written last and
atomically (a temporary file renamed over it): a folder without a valid index is incomplete and is
refused. The index records each array's shape, dtype and byte size, checked when the folder is opened.

Samples are found by *content*, not by position: ``keys.npy`` holds a SHA-1 of each sample's inputs
(the tensors the student's forward receives, one row each), so any sampler order works, and a batch
whose inputs are not in the file (other data, other preprocessing, augmentation) is an error naming
the fix rather than a silent mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_eff.errors import ConfigError

FORMAT = "lightning-eff teacher outputs v1"
ARRAYS = ("values", "indices", "keys")


# -- the math ----------------------------------------------------------------------------------------


def top_k_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest logits along the last dimension and their class indices."""
    values, indices = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    return values, indices


def sparse_kd_loss(student_logits: Tensor, top_values: Tensor, top_indices: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(p_k || q)`` averaged over samples, where ``p_k`` is the teacher's softmax at
    temperature ``T`` over its top-k logits only (renormalised) and ``q`` the student's full softmax,
    read at those k classes. With ``k`` = all classes it equals :func:`~.losses.kd_loss`."""
    classes = student_logits.shape[-1]
    k = top_values.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    log_q_k = log_q.gather(1, top_indices.reshape(-1, k).long().to(log_q.device))
    log_p = F.log_softmax(top_values.float().reshape(-1, k).to(log_q.device) / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q_k)).sum(1).mean() * temperature**2


def sample_keys(args: tuple, kwargs: dict[str, Any]) -> list[bytes]:
    """A SHA-1 per sample of every tensor among the forward's inputs (row ``i`` of each, dimension 0)."""
    tensors = [t for t in _tensors((args, kwargs))]
    if not tensors:
        raise ValueError("the student's forward received no tensor to identify samples by")
    n = tensors[0].shape[0]
    digests = [hashlib.sha1() for _ in range(n)]
    for t in tensors:
        rows = t.detach().cpu().contiguous()
        if rows.shape[0] != n:
            continue  # not batched along dimension 0 (shared metadata)
        for i in range(n):
            digests[i].update(str(tuple(rows[i].shape)).encode())
            digests[i].update(rows[i].numpy().tobytes())
    return [d.digest() for d in digests]


def _tensors(obj: Any):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


# -- the folder --------------------------------------------------------------------------------------


def atomic_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


class TeacherOutputsWriter:
    """Fills ``values``/``indices`` ``[N, *sample_shape, k]`` and ``keys`` ``[N, 20]`` row by row; the
    index is written by :meth:`close`, only once every row was written."""

    def __init__(self, folder: str | os.PathLike, samples: int, sample_shape: tuple[int, ...], k: int, classes: int, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        index = self.folder / "index.json"
        if index.exists():
            index.unlink()  # the old index must not vouch for arrays being rewritten
        shape = (samples, *sample_shape, k)
        self.values = np.lib.format.open_memmap(self.folder / "values.npy", mode="w+", dtype=np.float16, shape=shape)
        self.indices = np.lib.format.open_memmap(self.folder / "indices.npy", mode="w+", dtype=np.int32, shape=shape)
        self.keys = np.lib.format.open_memmap(self.folder / "keys.npy", mode="w+", dtype=np.uint8, shape=(samples, 20))
        self.samples, self.sample_shape, self.k, self.classes, self.meta = samples, tuple(sample_shape), k, classes, meta
        self.written = 0

    def add(self, values: Tensor, indices: Tensor, keys: list[bytes]) -> None:
        n = len(keys)
        rows = slice(self.written, self.written + n)
        self.values[rows] = values.detach().cpu().to(torch.float16).numpy()
        self.indices[rows] = indices.detach().cpu().to(torch.int32).numpy()
        self.keys[rows] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, 20)
        self.written += n

    def close(self) -> Path:
        if self.written != self.samples:
            raise RuntimeError(f"wrote {self.written} of {self.samples} samples: the index is not written")
        if len(set(map(bytes, self.keys))) != self.samples:
            raise ConfigError("two training samples have identical inputs: they cannot be told apart by content")
        arrays = {}
        for name in ARRAYS:
            array = getattr(self, name)
            array.flush()
            arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": (self.folder / f"{name}.npy").stat().st_size}
        payload = {"format": FORMAT, "samples": self.samples, "sample_shape": list(self.sample_shape), "top_k": self.k,
                   "classes": self.classes, "arrays": arrays, "meta": self.meta}
        atomic_json(self.folder / "index.json", payload)
        return self.folder


class TeacherOutputs:
    """An opened, validated folder: top-k values and indices of a sample found by its inputs' key."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise ConfigError(
                f"teacher_outputs={str(self.folder)!r} has no index.json: it does not exist or its writing did not "
                "finish; (re)run `lightning-eff distill cache`"
            )
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"teacher_outputs={str(self.folder)!r}: index.json is unreadable ({exc})") from None
        if self.index.get("format") != FORMAT:
            raise ConfigError(f"teacher_outputs={str(self.folder)!r}: index.json is not a {FORMAT!r} index")
        arrays = {}
        for name in ARRAYS:
            expected = self.index["arrays"][name]
            path = self.folder / f"{name}.npy"
            if not path.is_file() or path.stat().st_size != expected["bytes"]:
                raise ConfigError(f"teacher_outputs={str(self.folder)!r}: {name}.npy is missing or not the size its index records; rerun `lightning-eff distill cache`")
            array = np.load(path, mmap_mode="r")
            if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
                raise ConfigError(f"teacher_outputs={str(self.folder)!r}: {name}.npy holds {array.shape} {array.dtype}, its index {expected['shape']} {expected['dtype']}")
            arrays[name] = array
        self.values, self.indices = arrays["values"], arrays["indices"]
        self.rows = {bytes(key): i for i, key in enumerate(arrays["keys"])}
        self.samples, self.top_k, self.classes = self.index["samples"], self.index["top_k"], self.index["classes"]
        self.sample_shape = tuple(self.index["sample_shape"])

    def lookup(self, keys: list[bytes]) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of the samples with these keys; a key not in the file is a ValueError."""
        missing = sum(1 for k in keys if k not in self.rows)
        if missing:
            raise ValueError(
                f"{missing} of {len(keys)} samples of the batch are not in teacher_outputs={str(self.folder)!r}: the "
                "training data (or its preprocessing/augmentation) differs from the data the outputs were stored for; "
                "rerun `lightning-eff distill cache` on this data"
            )
        rows = np.array([self.rows[k] for k in keys])
        return torch.from_numpy(self.values[rows].astype(np.float32)), torch.from_numpy(self.indices[rows].astype(np.int64))
