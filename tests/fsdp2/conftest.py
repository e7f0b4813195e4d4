"""One FSDP2 launch per test session, shared by every test in this folder and by both xdist workers.

Two processes importing torch and Lightning cost ~10 s on two cores; each case then costs well
under a second. The first worker to need the results runs every case of ``cases.ALL_CASES``; the
other waits on the lock and reads the saved results."""

import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

# The cases reuse the families' test models (tests/<family>/*_helpers.py); the spawned processes
# inherit this sys.path.
TESTS = Path(__file__).resolve().parent.parent
for family in ("data", "precision", "moe"):
    if str(TESTS / family) not in sys.path:
        sys.path.insert(0, str(TESTS / family))


@pytest.fixture(scope="session")
def fsdp2_results(tmp_path_factory, worker_id):
    from cases import ALL_CASES

    from lightning_eff.testing_fsdp2 import run_fsdp2

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base  # the session's folder under xdist
    folder = shared / "fsdp2_launch"
    with FileLock(str(shared / "fsdp2_launch.lock")):
        saved = folder / "results.pt"
        if not saved.exists():
            folder.mkdir(exist_ok=True)
            try:
                results = run_fsdp2(ALL_CASES, folder)
            except Exception as exc:  # noqa: BLE001 - every test reports it, the other worker does not retry
                results = {"__launch_error__": f"{type(exc).__name__}: {exc}"}
            torch.save(results, saved)
        results = torch.load(saved, weights_only=False)
    assert "__launch_error__" not in results, results.get("__launch_error__")
    return results, folder
