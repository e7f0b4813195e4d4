"""The opt-in sampler through which InfoBatch changes what each epoch iterates.

A Callback cannot change a DataLoader's sampling, and patching DataLoader globally would surprise
every other loader in the process. So the user's data module opts in explicitly::

    DataLoader(dataset, batch_size=64, sampler=InfoBatchSampler(dataset))
    # or: info_batch_dataloader(existing_loader)

It subclasses ``DistributedSampler``: Lightning leaves a DistributedSampler alone under DDP
(``use_distributed_sampler`` only replaces other samplers) and calls its ``set_epoch``. It shards
the epoch's plan over ranks itself (world size read at iteration time, so it can be built before
the process group exists). Without an InfoBatch technique attached it is a plain shuffling sampler.

Resuming mid-epoch: Lightning restores the position only of DataLoaders that implement
``state_dict``/``load_state_dict`` and restarts any other loader's epoch from its first batch while
``batch_idx`` carries on. InfoBatch keeps the epoch's plan and the number of batches done in its own
state and hands them back through ``set_plan(..., start=...)``: the resumed epoch yields only the
samples not trained on yet. Without InfoBatch the restarted epoch yields from its first sample, and
``position_of_batch`` maps Lightning's carried-on batch_idx to the batch actually served.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .info_batch_plan import full_plan, shard


def world_and_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class InfoBatchSampler(DistributedSampler):
    """Iterates the epoch plan InfoBatch sets (``set_plan``), sharded over DDP ranks."""

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        # num_replicas/rank are placeholders: the real ones are read when an epoch starts.
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.size = len(dataset)
        self.plan: list[int] | None = None
        self.plan_epoch: int | None = None
        #: this rank's dataset indices of the epoch being iterated, in iteration order
        self.epoch_indices: list[int] = []
        self.start = 0
        self.served_from = 0  # where in epoch_indices the current iteration started
        self._first_batch_idx: int | None = None

    def set_plan(self, order: list[int], epoch: int, start: int = 0) -> None:
        """Iterate ``order`` in epoch ``epoch``. ``start``: samples of this rank's share already
        trained on (a mid-epoch checkpoint): the next iteration of that epoch skips them, once."""
        self.plan, self.plan_epoch, self.start = list(order), epoch, start

    def _order(self) -> list[int]:
        if self.plan is not None and self.plan_epoch == self.epoch:
            return self.plan
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return full_plan(self.size, g, self.shuffle)[0].tolist()

    def __iter__(self) -> Iterator[int]:
        world, rank = world_and_rank()
        self.epoch_indices = shard(self._order(), rank, world, self.drop_last)
        start = self.start if self.plan_epoch == self.epoch else 0
        self.start = 0
        self.served_from, self._first_batch_idx = start, None
        return iter(self.epoch_indices[start:])

    def position_of_batch(self, batch_idx: int, batch_size: int) -> int:
        """Where in ``epoch_indices`` the batch Lightning calls ``batch_idx`` starts. The first batch
        asked about in an iteration is that iteration's first: after a mid-epoch resume Lightning's
        batch_idx carries on (batch k) while this iteration starts at ``served_from`` (InfoBatch's
        resume point, or 0 when an ordinary DataLoader restarts its epoch)."""
        if self._first_batch_idx is None:
            self._first_batch_idx = batch_idx
        return self.served_from + (batch_idx - self._first_batch_idx) * batch_size

    def __len__(self) -> int:
        world, rank = world_and_rank()
        return len(shard(self._order(), rank, world, self.drop_last))


def info_batch_dataloader(loader: DataLoader, seed: int = 0) -> DataLoader:
    """The same DataLoader (dataset, batch size, collation, workers) sampling through InfoBatchSampler.

    ``loader`` must be map-style (InfoBatch addresses samples by index) and use a plain sampler:
    its shuffling becomes the sampler's.
    """
    from torch.utils.data import IterableDataset, RandomSampler, SequentialSampler

    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "InfoBatch needs a map-style dataset (samples addressed by index), not an IterableDataset"
        )
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise TypeError(
            f"the loader already uses a custom sampler ({type(loader.sampler).__name__}): build the DataLoader with sampler=InfoBatchSampler(dataset) instead"
        )
    sampler = InfoBatchSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )
