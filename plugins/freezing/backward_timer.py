"""Measured backward time, before and after freezing: the saving a frozen prefix is supposed to give.

Timing never enters a technique's ``state_dict`` (it is not a function of the run, and resume must be
exact), so after a resume past the first freeze there is no in-process baseline and the saving is not
reported.
"""

from __future__ import annotations

import time
from collections import deque
from statistics import median

import torch

WARMUP_STEPS = 2  # the first backward passes pay for allocations
WINDOW = 20
CUDA_EVERY = 10  # on CUDA each measurement synchronises: sample one step in ten


class BackwardTimer:
    def __init__(self) -> None:
        self.baseline: list[float] = []  # steps with nothing frozen
        self.recent: deque[float] = deque(maxlen=WINDOW)  # steps with the current frozen set
        self.previous: list[float] = []  # the window before the last change (until `recent` fills)
        self._seen = 0
        self._started: float | None = None
        self._cuda = False

    def start(self, step: int, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        if self._cuda:
            if step % CUDA_EVERY:
                self._started = None
                return
            torch.cuda.synchronize(device)
        self._started = time.perf_counter()

    def stop(self, device: torch.device, anything_frozen: bool) -> None:
        if self._started is None:
            return
        if self._cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - self._started
        self._started = None
        self._seen += 1
        if self._seen <= WARMUP_STEPS:
            return
        if anything_frozen:
            self.recent.append(seconds)
        else:
            self.baseline.append(seconds)

    def frozen_set_changed(self) -> None:
        if self.recent:
            self.previous = list(self.recent)
        self.recent.clear()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.baseline:
            out["backward_seconds_unfrozen"] = median(self.baseline)
        latest = list(self.recent) or self.previous
        if latest:
            out["backward_seconds"] = median(latest)
            if self.baseline:
                out["backward_time_saved"] = 1.0 - median(latest) / median(self.baseline)
        return out
