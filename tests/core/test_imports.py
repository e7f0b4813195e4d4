"""One place turns a user's import path into an object without calling it (recipes' class_path, the
bench's --model/--data, data techniques' reference classes)."""

from __future__ import annotations

import collections

import pytest
from torch import nn

from lightning_eff.errors import ConfigError
from lightning_eff.imports import import_attribute, import_subclass


@pytest.mark.parametrize("path", ["collections:OrderedDict", "collections.OrderedDict"])
def test_both_spellings_name_the_same_attribute(path):
    assert import_attribute(path, "--x", "pkg.mod:Name") is collections.OrderedDict


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("nothing", "is not a dotted path to a class; write it as pkg.mod:Name"),
        (42, "is not a dotted path"),
        ("no_such_pkg_abc:Thing", "cannot import 'no_such_pkg_abc:Thing'"),
        ("collections:OrderedDicts", "has no 'OrderedDicts' (did you mean 'OrderedDict'?)"),
    ],
)
def test_bad_paths_are_one_config_error_naming_the_option(path, fragment):
    with pytest.raises(ConfigError, match="^--x") as info:
        import_attribute(path, "--x", "pkg.mod:Name")
    assert fragment in str(info.value)


def test_a_function_is_refused_without_being_called(monkeypatch):
    import tempfile

    called = []
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: called.append(1))
    with pytest.raises(ConfigError, match="names a function, not a torch.nn.modules.module.Module subclass"):
        import_subclass("tempfile:mkdtemp", nn.Module, "--model", "pkg.mod:Model")
    assert called == []
    assert import_subclass("torch.nn:Linear", nn.Module, "--model", "pkg.mod:Model") is nn.Linear
