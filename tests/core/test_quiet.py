"""Known third-party noise (torchao's optional CUDA extensions on CPU, torch's pytree Enum warning) is
dropped on every run; anything else those loggers say still shows."""

from __future__ import annotations

import logging

import lightning_eff  # noqa: F401 - importing the package installs the filters
from lightning_eff.quiet import silence_known_noise


def test_torchao_extension_load_failures_are_dropped_but_other_torchao_warnings_show(caplog):
    caplog.set_level(logging.WARNING)
    logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: nope")
    logging.getLogger("torchao").warning("float8 needs SM89")
    assert [r.getMessage() for r in caplog.records] == ["float8 needs SM89"]


def test_pytree_enum_warning_is_dropped(caplog):
    caplog.set_level(logging.WARNING)
    logging.getLogger("torch.utils._pytree").warning(
        "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type.", "<enum 'X'>"
    )
    logging.getLogger("torch.utils._pytree").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_installing_twice_adds_one_filter_per_logger():
    silence_known_noise()
    silence_known_noise()
    assert len(logging.getLogger("torchao").filters) == 1
