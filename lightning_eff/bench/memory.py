"""Peak memory of one run, on whichever device it trains.

CUDA: ``torch.cuda.max_memory_allocated`` (tensors only), reset before the run. CPU: the process's
peak resident set size (VmHWM), which Linux lets a process reset by writing ``5`` to
``/proc/self/clear_refs``; the number includes the interpreter and libraries, so compare arms, not
absolute values. Where the reset is impossible (macOS, restricted /proc) the process-wide high-water
mark of ``getrusage`` is reported and labelled as such: it never goes down between runs.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

CUDA = "cuda_max_allocated"
RSS = "cpu_peak_rss"
RSS_PROCESS = "cpu_process_high_water"


def reset_peak(device: str) -> str:
    """Start measuring; returns the kind of measurement :func:`read_peak_mb` will report."""
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return CUDA
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _vm_hwm_kb()
        return RSS
    except (OSError, ValueError):
        return RSS_PROCESS


def read_peak_mb(kind: str) -> float:
    if kind == CUDA:
        return torch.cuda.max_memory_allocated() / 2**20
    if kind == RSS:
        return _vm_hwm_kb() / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _vm_hwm_kb() -> int:
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise ValueError("no VmHWM in /proc/self/status")
    return int(match.group(1))
