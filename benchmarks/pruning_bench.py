"""Run the time-to-quality harness for a pruning recipe and print the table (the method cards' numbers).

    python benchmarks/pruning_bench.py --task vision --recipe gradual_pruning --out bench-out/gp-vision

Same as ``lightning-eff bench --task T --recipe R``, through the Python API
(``lightning_eff.bench.run_bench``), for when the command line is not available.
"""

from __future__ import annotations

import argparse
import json

from lightning_eff.bench import format_table, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="vision")
    parser.add_argument("--recipe", default="gradual_pruning")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run_bench(args.task, args.recipe, repeats=args.repeats, max_steps=args.max_steps, out=args.out, quiet=True)
    print(format_table(result))
    finals = {arm: [r.final_quality for r in result.runs if r.arm == arm] for arm in ("baseline", "recipe")}
    print(json.dumps({"final_quality": finals, "command": result.environment.command}, indent=1))


if __name__ == "__main__":
    main()
