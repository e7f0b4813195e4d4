"""Peak memory of fused linear + cross-entropy vs the unfused computation (materialised logits), on CPU.

    python benchmarks/kernel_memory.py [--tokens 4096] [--hidden 1024] [--vocab 32000]

Both run the PyTorch reference path (``LIGHTNING_EFF_KERNELS=torch``): the fused op with its token
chunking, the unfused one as ``F.cross_entropy(hidden @ weight.T, reduction="none")`` with autograd.
Two workloads: *scoring* (forward under ``no_grad``, what data filtering does) and *training*
(forward + backward with an arbitrary per-sample upstream gradient, producing the hidden-state
and weight gradients).

Method: a ``TorchDispatchMode`` sees every aten op; each op's output storages are tracked through
weak references to the C++ storage (``StorageWeakRef``), so a tensor counts as live exactly as long
as anything -- Python or autograd's saved tensors -- holds it. Live bytes are summed at every op
boundary; the peak is the largest sum. Storages of the inputs that existed before are excluded, so
the number is the memory the loss computation adds. Scratch space inside a single aten kernel is
not seen (the same for both paths). The fused path's forward and backward functions are called
directly rather than through their ``torch.library`` custom op, because a dispatch mode sees a
custom op as one opaque call and would miss the chunk buffers inside it.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

flce = importlib.import_module("lightning_eff.kernels.fused_linear_cross_entropy")


class LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes of live tensor storages created inside the ``with`` block; ``peak`` is the max."""

    def __init__(self, preexisting: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self._excluded = {t.untyped_storage()._cdata for t in preexisting}
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._forget_freed()  # first: a freed storage's address may be reused by this op's output
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        self.peak = max(self.peak, self.current)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self._excluded or key in self._live:
            return
        self._live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.current += storage.nbytes()

    def _forget_freed(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= nbytes


def peak_bytes(fn: Callable[[], Any], preexisting: list[torch.Tensor]) -> int:
    with LiveTensorBytes(preexisting) as tracker:
        result = fn()
        del result
    return tracker.peak


def inputs(tokens: int, hidden: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, t, torch.randn(tokens, generator=g)


def unfused_scoring(h, w, t, g):
    with torch.no_grad():
        return F.cross_entropy(h @ w.T, t, reduction="none")


def unfused_training(h, w, t, g):
    h, w = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
    loss = F.cross_entropy(h @ w.T, t, reduction="none")
    return torch.autograd.grad(loss, [h, w], g)


def fused_scoring(h, w, t, g, chunk: int):
    return flce.fused_linear_cross_entropy_forward(h, w, None, t, -100, chunk)[0]


def fused_training(h, w, t, g, chunk: int):
    _, lse = flce.fused_linear_cross_entropy_forward(h, w, None, t, -100, chunk)
    return flce.fused_linear_cross_entropy_backward(h, w, None, t, lse, g, -100, chunk, (True, True, False))


def measure(tokens: int, hidden: int, vocab: int) -> dict[str, int]:
    """Peak added bytes of each (path, workload), with the reference kernels and default chunking."""
    os.environ["LIGHTNING_EFF_KERNELS"] = "torch"  # the CPU production path, also where TRITON_INTERPRET=1
    args = inputs(tokens, hidden, vocab)
    chunk = flce.default_chunk_size(tokens, hidden, vocab)
    return {
        "unfused scoring": peak_bytes(lambda: unfused_scoring(*args), list(args)),
        "fused scoring": peak_bytes(lambda: fused_scoring(*args, chunk), list(args)),
        "unfused training": peak_bytes(lambda: unfused_training(*args), list(args)),
        "fused training": peak_bytes(lambda: fused_training(*args, chunk), list(args)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    a = parser.parse_args(argv)
    chunk = flce.default_chunk_size(a.tokens, a.hidden, a.vocab)
    result = measure(a.tokens, a.hidden, a.vocab)
    logits_mb = a.tokens * a.vocab * 4 / 2**20
    print(f"tokens={a.tokens} hidden={a.hidden} vocab={a.vocab} float32, chunk={chunk} tokens; "
          f"one full logits tensor = {logits_mb:.0f} MiB")
    for workload in ("scoring", "training"):
        unfused, fused = result[f"unfused {workload}"], result[f"fused {workload}"]
        print(f"{workload:9s} unfused {unfused / 2**20:8.1f} MiB   fused {fused / 2**20:8.1f} MiB   "
              f"fused/unfused = {fused / unfused:.3f}")


if __name__ == "__main__":
    main()
