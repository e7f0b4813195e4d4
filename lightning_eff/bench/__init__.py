"""Time-to-quality harness: baseline vs. recipe on embedded tasks or your own module and data.

``lightning-eff bench`` on the command line; :func:`run_bench` from Python. See docs/benchmarking.md.
"""

from lightning_eff.bench.harness import run_bench
from lightning_eff.bench.report import load_result, write_report
from lightning_eff.bench.schema import BenchResult
from lightning_eff.bench.table import format_table
from lightning_eff.bench.tasks import TASKS, BenchModule, BenchTask, get_task

__all__ = ["TASKS", "BenchModule", "BenchResult", "BenchTask", "format_table", "get_task", "load_result", "run_bench", "write_report"]
