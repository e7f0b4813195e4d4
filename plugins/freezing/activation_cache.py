"""Activation caching for a frozen prefix: once the first ``t`` blocks are frozen, their output for a
training sample is the same every epoch, *if* the sample's tensors are the same every epoch (static
data: no augmentation, random crops or masking) and the prefix computes a function of the sample
alone (no dropout, no batch statistics). Then the output can be stored per sample the first time it is
computed and fed to block ``t`` on later visits, and blocks ``0..t-1`` are not run at all.

How a cached batch runs: for the batch, the ``forward`` of each block ``0..t-1`` is replaced (an
instance attribute, removed after the batch) by a stub that returns the stored output of block ``t-1``
(blocks before it return zeros of the same structure: their output only feeds the stubs after them).
The model's own code between the blocks runs unchanged, so this is exact when the cut is a *chain*:
block ``t``'s input is block ``t-1``'s output and nothing else computed in the prefix is used after
it (``nn.Sequential`` stacks, transformer layer stacks). The first batch served at each cut is run the
ordinary way instead and checked: the prefix output must equal the cached one (else the data is not
static and training stops with an error) and block ``t`` must receive block ``t-1``'s output (else the
cut is not a chain, e.g. GPT-2's ``wte + wpe``, and that cut is never used again, with a warning).

Which cut: the cache is filled at a *target* cut, set at every epoch start to the frozen prefix (the
longest prefix of blocks that hold no trainable parameter), and within an epoch only raised from 0.
A batch whose samples are all stored at cut ``s`` skips blocks ``0..s-1``; when the target ``t`` is
deeper, blocks ``s..t-1`` run and their output replaces the stored one (a grown prefix upgrades the
cache as it is visited, without recomputing from the input). A batch with samples stored at different
cuts, or not stored, runs in full and is stored at the target.

Sample indices (the cache's keys) come from the LightningModule's ``sample_indices(batch)`` when it
defines one, else from a sampler that records the indices it yields in ``epoch_indices`` (the data
plugin's ``InfoBatchSampler``, the convention of ``info_batch`` and ``rho_loss``): batch ``b`` of the
epoch holds ``epoch_indices[b * batch_size : (b + 1) * batch_size]``, counted from the batch the
iteration started at (``InfoBatchSampler.position_of_batch``: after a mid-epoch resume Lightning's
batch_idx carries on while an ordinary loader restarts its epoch).

The cache is derived state: never checkpointed, rebuilt after a resume (results are identical either
way, because a served activation equals the recomputed one).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils._pytree import tree_flatten, tree_unflatten

# -- preflight helpers -------------------------------------------------------------------------------


def _stochastic_reason(module: nn.Module) -> str | None:
    """Why a module's training-mode output is not a function of its own sample, or None."""
    if isinstance(module, _DropoutNd) and module.p > 0:
        return f"{type(module).__name__} p={module.p}"
    if isinstance(module, _BatchNorm):
        return f"{type(module).__name__}: batch statistics in training mode"
    if isinstance(module, nn.RReLU):
        return "RReLU: random slopes in training mode"
    for key, value in vars(module).items():  # functional dropout: transformers' attention_dropout...
        if (
            "drop" in key.lower()
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value > 0
        ):
            return f"{key}={value}"
    return None


def prefix_module_names(model: nn.Module, block_names: Sequence[str], count: int) -> list[str]:
    """Modules that take part in computing the first ``count`` blocks' output: everything inside them,
    and the parameter-free modules registered before the end of the last one that are not inside a
    later block (registration order stands for forward order, as for the blocks themselves), e.g.
    GPT-2's ``drop`` between the embeddings and the first layer."""
    if count <= 0:
        return []
    last = block_names[count - 1]
    later = block_names[count:]
    names = [n for n, _ in model.named_modules()]

    def inside(name: str, block: str) -> bool:
        return block == "" or name == block or name.startswith(f"{block}.")

    end = max(i for i, n in enumerate(names) if inside(n, last))
    return [n for n in names[: end + 1] if not any(inside(n, b) for b in later)]


def stochastic_modules(model: nn.Module, block_names: Sequence[str], count: int) -> list[str]:
    """``"name (reason)"`` for each stochastic module among the prefix's modules."""
    modules = dict(model.named_modules())
    out = []
    for name in prefix_module_names(model, block_names, count):
        reason = _stochastic_reason(modules[name])
        if reason is not None:
            out.append(f"{name or type(model).__name__} ({reason})")
    return out


def first_loader(loaders: Any) -> Any:
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def index_sampler(loader: Any) -> Any:
    """The loader's sampler when it records ``epoch_indices`` (InfoBatchSampler and look-alikes)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is None or not hasattr(sampler, "epoch_indices"):
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(batch_sampler, "sampler", None)
    return sampler if sampler is not None and hasattr(sampler, "epoch_indices") else None


def dataset_size(loader: Any) -> int | None:
    sampler = index_sampler(loader)
    if sampler is not None and hasattr(sampler, "size"):
        return int(sampler.size)
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def declared_static(trainer, loader: Any) -> bool | None:
    """``static_data`` declared by the data module or the training dataset (None: not declared)."""
    for owner in (getattr(trainer, "datamodule", None), getattr(loader, "dataset", None)):
        value = getattr(owner, "static_data", None)
        if isinstance(value, bool):
            return value
    return None


def per_sample_bytes(output: Any, batch: int) -> tuple[int, tuple]:
    """Bytes one sample of ``output`` takes in the cache, and the layout (shapes, dtypes) of its leaves."""
    leaves, _ = tree_flatten(output)
    total, layout = 0, []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1 and leaf.shape[0] == batch:
            total += leaf[0].numel() * leaf.element_size()
            layout.append((tuple(leaf.shape[1:]), leaf.dtype))
    return total, tuple(layout)


def probe_prefix_outputs(
    pl_module, loader: Any, modules: Sequence[nn.Module]
) -> list[tuple[int, tuple]] | None:
    """Per-sample bytes and layout of each block's output, from one sample run through
    ``pl_module.per_sample_loss`` in eval mode without gradients, the RNG left untouched; None when
    the module has no ``per_sample_loss`` or the probe fails (the limit is then checked when the
    cache is filled)."""
    per_sample_loss = getattr(pl_module, "per_sample_loss", None)
    dataset, collate = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
    if per_sample_loss is None or dataset is None or collate is None:
        return None
    found: dict[int, tuple[int, tuple]] = {}

    def recorder(i):
        def hook(module, args, output):
            found.setdefault(i, per_sample_bytes(output, 1))

        return hook

    modes = {m: m.training for m in pl_module.modules()}
    handles = [m.register_forward_hook(recorder(i)) for i, m in enumerate(modules)]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            pl_module.eval()
            per_sample_loss(collate([dataset[0]]))
    except Exception:  # noqa: BLE001 - a probe that cannot run leaves the check to training time
        return None
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    if len(found) != len(modules):
        return None
    return [found[i] for i in range(len(modules))]


def estimate_bytes(probe: list[tuple[int, tuple]], samples: int) -> int:
    """Most the cache can hold: one output per sample, two when a grown prefix changes the layout
    (the old cut is kept until its samples are upgraded)."""
    by_layout: dict[tuple, int] = {}
    for size, layout in probe:
        by_layout[layout] = max(by_layout.get(layout, 0), size)
    top = sorted(by_layout.values(), reverse=True)[:2]
    return samples * sum(top)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


# -- the cache ---------------------------------------------------------------------------------------


@dataclass
class _Store:
    """Outputs at one cut: per-sample leaves ``[N, ...]``, the tree structure and the other leaves."""

    leaves: list[torch.Tensor]
    spec: Any
    per_sample: list[bool]
    constants: list[Any]
    layout: tuple
    valid: torch.Tensor  # bool [N]


def _first_tensor(values) -> torch.Tensor | None:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    return None


class CachePolicyError(RuntimeError):
    """The cached activations do not match what the prefix computes now."""


@dataclass
class _Batch:
    indices: torch.Tensor
    served: int = 0  # blocks replaced by the cache
    record: int = 0  # cut whose output is stored in this batch (0: none)
    verify: int = 0  # cut checked in this batch (0: none)
    recorded: bool = False
    captured_output: Any = None
    captured_input: torch.Tensor | None = None
    markers: list = field(default_factory=list)
    skip_found: bool = False
    handles: list = field(default_factory=list)
    patched: list = field(default_factory=list)


class ActivationCache:
    """Stored outputs of a frozen prefix, per sample and cut; see the module docstring."""

    def __init__(
        self,
        modules: Sequence[nn.Module],
        names: Sequence[str],
        samples: int,
        max_bytes: int,
        storage_device: torch.device | None = None,
        owner: str = "freezing",
    ) -> None:
        self.modules, self.names = list(modules), list(names)
        self.samples, self.max_bytes, self.owner = samples, max_bytes, owner
        self.storage_device = storage_device or torch.device("cpu")
        self.levels = torch.zeros(samples, dtype=torch.long)  # cut each sample is stored at (0: none)
        self.stores: dict[int, _Store] = {}
        self.target = 0
        self.verified: set[int] = set()
        self.broken: set[int] = set()
        self._batch: _Batch | None = None
        # counters (not state: a resumed run refills the cache)
        self.batches_served = 0
        self.batches_total = 0
        self.block_forwards_skipped = 0
        self.samples_stored = 0
        self.peak_bytes = 0

    # -- which cut ------------------------------------------------------------------------------------

    def usable(self, cut: int) -> int:
        cut = min(cut, len(self.modules) - 1)  # the last block's output is the model's: nothing to skip after
        while cut > 0 and cut in self.broken:
            cut -= 1
        return cut

    def new_epoch(self, cut: int) -> None:
        self.target = self.usable(cut)

    def raise_target_from_zero(self, cut: int) -> None:
        if self.target == 0:
            self.target = self.usable(cut)

    # -- per batch ------------------------------------------------------------------------------------

    def begin_batch(self, indices: torch.Tensor, device: torch.device) -> None:
        self.end_batch()
        self.batches_total += 1
        t = self.target
        if t == 0:
            return
        indices = indices.to("cpu", torch.long)
        if indices.numel() == 0:
            return
        if int(indices.min()) < 0 or int(indices.max()) >= self.samples:
            raise IndexError(
                f"{self.owner}: sample indices {indices.tolist()[:8]}... lie outside the dataset's {self.samples} samples"
            )
        batch = self._batch = _Batch(indices=indices)
        levels = self.levels[indices]
        s = int(levels[0]) if bool((levels == levels[0]).all()) else 0
        if s > t or s not in self.stores or s in self.broken:
            s = 0
        if s > 0 and s not in self.verified:
            batch.verify = s
            for i in range(s - 1):
                batch.handles.append(self.modules[i].register_forward_hook(self._mark))
            batch.handles.append(self.modules[s - 1].register_forward_hook(self._capture_output))
            batch.handles.append(
                self.modules[s].register_forward_pre_hook(self._capture_input, with_kwargs=True)
            )
        elif s > 0:
            self._serve(batch, s, device)
        if t > batch.served and t != batch.verify:
            batch.record = t
            batch.handles.append(self.modules[t - 1].register_forward_hook(self._record))

    def end_batch(self, failed: bool = False) -> None:
        """Restore the blocks' forwards and remove the hooks (also after an exception)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        for handle in batch.handles:
            handle.remove()
        for module, had, previous in batch.patched:
            if had:
                module.forward = previous
            else:
                del module.forward
        if batch.served:
            self.batches_served += 1
        if batch.verify and not failed:
            self._check(batch)

    # -- serving --------------------------------------------------------------------------------------

    def _gather(self, store: _Store, indices: torch.Tensor, device: torch.device) -> Any:
        leaves, it = [], iter(store.leaves)
        for is_sample, constant in zip(store.per_sample, store.constants):
            if is_sample:
                leaves.append(
                    next(it).index_select(0, indices.to(store.leaves[0].device)).to(device, non_blocking=True)
                )
            else:
                leaves.append(constant)
        return tree_unflatten(leaves, store.spec)

    def _serve(self, batch: _Batch, s: int, device: torch.device) -> None:
        store = self.stores[s]
        payload = self._gather(store, batch.indices, device)
        leaves, spec = tree_flatten(payload)
        zeros = tree_unflatten(
            [torch.zeros_like(x) if isinstance(x, torch.Tensor) else x for x in leaves], spec
        )
        n = batch.indices.numel()
        for i in range(s):
            module = self.modules[i]
            had = "forward" in module.__dict__
            batch.patched.append((module, had, module.__dict__.get("forward")))
            module.forward = self._stub(payload if i == s - 1 else zeros, n, self.names[i])
        batch.served = s
        self.block_forwards_skipped += s

    def _stub(self, value: Any, n: int, name: str):
        calls = [0]
        owner = self.owner

        def forward(*args, **kwargs):
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None and first.dim() >= 1 and first.shape[0] != n:
                raise RuntimeError(
                    f"{owner}: cached block {name!r} was called on {first.shape[0]} samples but the batch has {n}: "
                    "something cuts batches after the cache looked them up (a batch selector?); turn cache_activations off"
                )
            calls[0] += 1
            if calls[0] == 1:
                return value
            leaves, spec = tree_flatten(value)  # a second forward in one step gets its own copy
            return tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in leaves], spec)

        return forward

    # -- recording ------------------------------------------------------------------------------------

    def _record(self, module, args, output) -> None:
        batch = self._batch
        if batch is None or batch.recorded:
            return
        n = batch.indices.numel()
        leaves, spec = tree_flatten(output)
        per_sample = [isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == n for x in leaves]
        if not any(per_sample):
            return
        if any(x.requires_grad for x, s in zip(leaves, per_sample) if s):
            return  # part of the prefix still trains (a tied weight): its output cannot be reused
        batch.recorded = True
        t = batch.record
        store = self._store_for(t, leaves, spec, per_sample)
        rows = batch.indices.to(self.storage_device)
        with torch.no_grad():
            for target, leaf in zip(store.leaves, [x for x, s in zip(leaves, per_sample) if s]):
                target.index_copy_(0, rows, leaf.detach().to(self.storage_device, target.dtype))
        for level, other in list(self.stores.items()):
            if level != t:
                other.valid[batch.indices] = False
                if not bool(other.valid.any()):
                    del self.stores[level]
        store.valid[batch.indices] = True
        newly = int((self.levels[batch.indices] != t).sum())
        self.samples_stored += newly
        self.levels[batch.indices] = t

    def _store_for(self, t: int, leaves, spec, per_sample) -> _Store:
        sample_leaves = [x for x, s in zip(leaves, per_sample) if s]
        layout = tuple((tuple(x.shape[1:]), x.dtype) for x in sample_leaves)
        constants = [None if s else x for x, s in zip(leaves, per_sample)]
        store = self.stores.get(t)
        if store is not None:
            if store.layout != layout:
                raise CachePolicyError(
                    f"{self.owner}: block {self.names[t - 1]!r} output {[s for s, _ in layout]} per sample, but "
                    f"{[s for s, _ in store.layout]} when it was cached: activation caching needs every sample to have the same "
                    "shape every epoch (pad to a fixed length), or turn cache_activations off"
                )
            return store
        # a store at another cut with the same layout lends its tensors: a sample's row is rewritten
        # only when it moves to this cut, and then it is no longer valid at the other one
        lender = next((s for s in self.stores.values() if s.layout == layout), None)
        if lender is not None:
            tensors = lender.leaves
        else:
            needed = self.samples * sum(x[0].numel() * x.element_size() for x in sample_leaves)
            held = self.nbytes()
            if held + needed > self.max_bytes:
                raise CachePolicyError(
                    f"{self.owner}: the activation cache needs {format_bytes(held + needed)} for {self.samples} samples at "
                    f"block {self.names[t - 1]!r}, over cache_max_bytes={self.max_bytes} ({format_bytes(self.max_bytes)}): "
                    "raise cache_max_bytes, use cache_on='device' only if it fits, or turn cache_activations off"
                )
            pin = self.storage_device.type == "cpu" and torch.cuda.is_available() and sample_leaves[0].is_cuda
            tensors = [
                torch.empty(
                    (self.samples, *x.shape[1:]), dtype=x.dtype, device=self.storage_device, pin_memory=pin
                )
                for x in sample_leaves
            ]
        store = _Store(
            leaves=tensors,
            spec=spec,
            per_sample=per_sample,
            constants=constants,
            layout=layout,
            valid=torch.zeros(self.samples, dtype=torch.bool),
        )
        self.stores[t] = store
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        return store

    def nbytes(self) -> int:
        seen: dict[int, int] = {}
        for store in self.stores.values():
            for x in store.leaves:
                seen[id(x)] = x.numel() * x.element_size()
        return sum(seen.values())

    # -- verification ---------------------------------------------------------------------------------

    def _mark(self, module, args, output):
        """Verification batch, blocks before the cut: their outputs become (copies of) leaves that
        require a gradient, so that the backward pass shows whether the loss depends on them other
        than through block s-1 (whose output is detached): a skip connection around the cut."""
        batch = self._batch
        if batch is None:
            return None
        leaves, spec = tree_flatten(output)
        out = []
        for x in leaves:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 1:
                leaf = x.detach().requires_grad_()
                batch.markers.append(leaf)
                x = leaf.clone()  # not a leaf: the model's own in-place glue stays legal
            out.append(x)
        return tree_unflatten(out, spec)

    def check_backward(self, loss: torch.Tensor) -> None:
        """Before the backward pass of a verification batch: does the loss reach a marked output?"""
        batch = self._batch
        if batch is None or not batch.markers or loss.grad_fn is None:
            return
        ids = {id(m) for m in batch.markers}
        seen, stack = set(), [loss.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            variable = getattr(fn, "variable", None)
            if variable is not None and id(variable) in ids:
                batch.skip_found = True
                return
            stack.extend(f for f, _ in fn.next_functions)

    def _capture_output(self, module, args, output):
        """Block s-1 ran the ordinary way in a verification batch: its output must equal the cached one
        (checked here, before a deeper cut recorded in the same batch can reuse the rows). Returned
        detached, as the cached one would be."""
        batch = self._batch
        if batch is None:
            return None
        leaves, spec = tree_flatten(output)
        detached = tree_unflatten([x.detach() if isinstance(x, torch.Tensor) else x for x in leaves], spec)
        if batch.captured_output is not None:
            return detached
        s, n = batch.verify, batch.indices.numel()
        computed = [
            x.detach() for x in leaves if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == n
        ]
        batch.captured_output = computed
        store = self.stores.get(s)
        if store is None:
            return detached
        for new, rows in zip(computed, store.leaves):
            old = rows.index_select(0, batch.indices.to(rows.device)).float()
            new = new.detach().to(old.device).float()
            scale = float(old.abs().max()) if old.numel() else 0.0
            diff = float((new - old).abs().max()) if old.numel() else 0.0
            if not diff <= 1e-4 * scale + 1e-6:
                raise CachePolicyError(
                    f"{self.owner}: block {self.names[s - 1]!r} now computes outputs that differ from the ones cached "
                    f"for the same samples an epoch earlier (max abs difference {diff:.3g}): the training data is not "
                    "static (augmentation, random crops or masking?) or the prefix is stochastic; static_data=True "
                    "is wrong for this data: turn cache_activations off"
                )
        return detached

    def _capture_input(self, module, args, kwargs) -> None:
        if self._batch is not None and self._batch.captured_input is None:
            self._batch.captured_input = _first_tensor(list(args) + list(kwargs.values()))

    def _check(self, batch: _Batch) -> None:
        """After a verification batch: does block s receive block s-1's output (a chain)?"""
        s, computed = batch.verify, batch.captured_output
        if not computed:
            return
        received = batch.captured_input
        chained = (
            received is not None
            and received.shape == computed[0].shape
            and torch.equal(received, computed[0])
        )
        if chained and not batch.skip_found:
            self.verified.add(s)
            return
        self.broken.add(s)
        self.stores.pop(s, None)
        self.levels[self.levels == s] = 0
        self.target = self.usable(self.target)
        why = (
            f"block {self.names[s]!r} does not receive that block's output (the model combines prefix outputs "
            "between blocks)"
            if not chained
            else "the loss also depends on an earlier block's output through a path around the cut (a skip connection)"
        )
        warnings.warn(
            f"{self.owner}: activation caching is not used at the cut after block {self.names[s - 1]!r}: {why}, "
            "so serving that cut from the cache would change the result",
            stacklevel=2,
        )

    def release(self) -> None:
        """Free the stored activations (after fit); the counters stay for the metrics."""
        self.stores.clear()
        self.levels.zero_()
        self.target = 0

    # -- reporting ------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return {
            "cache_cut": float(self.target),
            "cache_bytes": float(self.nbytes()),
            "cache_peak_bytes": float(self.peak_bytes),
            "cache_samples": float(int((self.levels > 0).sum())),
            "cache_served_batch_fraction": self.batches_served / max(1, self.batches_total),
            "cache_block_forwards_skipped": float(self.block_forwards_skipped),
        }
