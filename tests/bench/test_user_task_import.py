"""`lightning-eff bench --model cli_app:Net` finds a module in the working directory, as `python -m`
does, without letting that directory shadow installed packages."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import pytest

from lightning_eff.bench.tasks.user import import_object
from lightning_eff.errors import ConfigError

APP = '''
import lightning.pytorch as pl

class Net(pl.LightningModule):
    pass
'''


@pytest.fixture
def app_dir(tmp_path, monkeypatch):
    module = "cli_app_for_import_test"
    (tmp_path / f"{module}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, module, raising=False)
    return tmp_path, module


def test_a_model_in_the_working_directory_is_found(app_dir):
    folder, module = app_dir
    cls = import_object(f"{module}:Net", "--model", pl.LightningModule)
    assert cls.__name__ == "Net" and cls.__module__ == module
    assert sys.path[-1] == str(folder), "the working directory goes last: it must not shadow installed packages"


def test_a_missing_module_names_the_working_directory_in_the_error(app_dir):
    folder, _ = app_dir
    with pytest.raises(ConfigError, match=f"working directory {folder}"):
        import_object("no_such_module_here:Net", "--model", pl.LightningModule)
