"""Where a teacher comes from, and how it is run.

A teacher is named the way the data family names its reference models (a recipe is data):

- a weights file (a Lightning ``.ckpt`` or a state dict in ``.pt``/``.pth``/``.bin``/``.safetensors``)
  read with ``weights_only=True`` / safetensors and loaded into ``teacher_class(**teacher_hparams)``;
- a local directory saved by transformers' ``save_pretrained``, loaded with
  ``teacher_class.from_pretrained(dir, local_files_only=True)`` (``teacher_class`` a
  ``transformers.PreTrainedModel`` subclass, e.g. ``transformers:AutoModelForCausalLM`` is refused:
  name the concrete class);
- a class path ``"pkg.mod:Class"`` (a ``torch.nn.Module`` subclass) built as ``Class(**teacher_hparams)``
  with the technique's seed (a randomly initialised teacher: for tests and ablations);
- in Python, a ``torch.nn.Module`` object.

The teacher is frozen (``requires_grad=False``), kept in eval mode and run under ``torch.no_grad``.
It is an attribute of the technique, not a submodule of the LightningModule: it never enters the
optimizer, the LightningModule's ``state_dict`` or the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_eff.errors import ConfigError
from lightning_eff.imports import import_subclass
from lightning_eff.weights import CHECKPOINT_SUFFIX, STATE_SUFFIXES, build_fresh_module, load_state_file

TeacherPrecision = Literal["fp32", "bf16"]
CLASS_EXAMPLE = "a class path as 'pkg.module:ClassName' (a torch.nn.Module subclass)"

def load_teacher(spec: Any, teacher_class: str | None, hparams: dict[str, Any] | None, seed: int) -> torch.nn.Module:
    """The teacher ``spec`` names (see the module docstring), frozen and in eval mode."""
    if isinstance(spec, torch.nn.Module):
        return freeze(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"teacher must be a weights file, a directory, 'pkg.mod:Class' or a torch.nn.Module, got a {type(spec).__name__}")
    text = os.fspath(spec)
    path = Path(text)
    hparams = dict(hparams or {})
    if path.is_dir():
        return freeze(_from_pretrained(path, teacher_class))
    if path.suffix in (CHECKPOINT_SUFFIX, *STATE_SUFFIXES) or path.exists():
        if not path.is_file():
            raise ConfigError(f"teacher={text!r}: no such weights file")
        if teacher_class is None:
            raise ConfigError(f"teacher={text!r} is a weights file: name the model it loads into with teacher_class='pkg.mod:Class'")
        state = load_state_file(path, "teacher", "teacher_class")
        if path.suffix == CHECKPOINT_SUFFIX or "state_dict" in state:
            if not isinstance(state.get("state_dict"), dict):
                raise ConfigError(f"teacher={text!r} is not a Lightning checkpoint: it has no 'state_dict'")
            hparams = {**dict(state.get("hyper_parameters") or {}), **hparams}
            state = state["state_dict"]
        model = _build(teacher_class, "teacher_class", hparams, seed)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"teacher={text!r} does not fit {type(model).__name__}(**{hparams}): {str(exc).splitlines()[0]}; "
                "give the matching teacher_class / teacher_hparams"
            ) from None
        return freeze(model)
    if teacher_class is not None:
        raise ConfigError(f"teacher_class={teacher_class!r} only applies to a teacher weights file or directory")
    return freeze(_build(text, "teacher", hparams, seed))


def _build(class_path: str, option: str, hparams: dict[str, Any], seed: int) -> torch.nn.Module:
    cls = import_subclass(class_path, torch.nn.Module, option, CLASS_EXAMPLE)
    try:
        return build_fresh_module(cls, hparams, seed)
    except TypeError as exc:
        raise ConfigError(f"{option}={class_path!r}: cannot build {cls.__name__}(**{hparams}): {exc}") from None


def _from_pretrained(path: Path, teacher_class: str | None) -> torch.nn.Module:
    if teacher_class is None:
        raise ConfigError(
            f"teacher={str(path)!r} is a directory: name its transformers class with "
            "teacher_class='transformers:LlamaForCausalLM' (or your PreTrainedModel subclass)"
        )
    try:
        from transformers import PreTrainedModel
    except ImportError:
        raise ConfigError(f"teacher={str(path)!r} is a directory, which needs transformers: pip install transformers") from None
    cls = import_subclass(teacher_class, PreTrainedModel, "teacher_class", "a transformers PreTrainedModel subclass, e.g. 'transformers:LlamaForCausalLM'")
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure gets the same advice
        raise ConfigError(f"teacher={str(path)!r} cannot be loaded by {cls.__name__}.from_pretrained: {str(exc).splitlines()[0]}") from None


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    return model.eval()


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, ``output.logits`` (transformers), ``output["logits"]``
    or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a {type(output).__name__} (expected a tensor, .logits, ['logits'] or a tuple)")


def run_teacher(teacher: torch.nn.Module, args: tuple, kwargs: dict[str, Any], precision: str) -> Any:
    """The teacher's output for the student's inputs: no grad, eval mode, bf16 autocast if asked."""
    teacher.eval()
    with torch.no_grad():
        if precision == "bf16":
            device_type = next((p.device.type for p in teacher.parameters()), "cpu")
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                return teacher(*args, **kwargs)
        return teacher(*args, **kwargs)
