"""Start-up time of the ``lightning-eff`` command: median wall seconds of each sub-command over
repeats, each in a fresh process, against the bare interpreter start measured in the same run.

    python benchmarks/cli_startup.py [--repeats 5]

Budget (issue 16): ``--help``, ``--version``, ``plugins``, ``info``, ``check`` under 2 s on the 2-core
development machine. ``plugins``, ``info`` and ``check`` need the techniques' classes, which are
Lightning callbacks: importing Lightning alone takes about 5 s here, so they cannot meet it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "lightning_eff" / "recipes" / "gradual_pruning.yaml"
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "--version": ["--version"],
    "--help": ["--help"],
    "new --help": ["new", "--help"],
    "plugins": ["plugins"],
    "info gradual_pruning": ["info", "gradual_pruning"],
    f"check {RECIPE.name}": ["check", str(RECIPE)],
}


def time_command(argv: list[str], repeats: int) -> float:
    cmd = argv if argv[0] == sys.executable else [sys.executable, "-m", "lightning_eff.cli", *argv]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<28} {'median s':>9}  (repeats: {args.repeats})")
    for label, argv in COMMANDS.items():
        print(f"{label:<28} {time_command(argv, args.repeats):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
