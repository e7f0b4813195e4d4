"""Time-to-quality harness: baseline vs. recipe on embedded tasks or your own module and data.

``lightning-eff bench`` on the command line; :func:`run_bench` from Python. See docs/benchmarking.md.
"""

from lightning_eff.lazy import lazy_exports

# Imported on first use: `lightning-eff --help` registers the bench command without importing Lightning.
_EXPORTS = {
    "run_bench": "lightning_eff.bench.harness",
    "load_result": "lightning_eff.bench.report",
    "write_report": "lightning_eff.bench.report",
    "BenchResult": "lightning_eff.bench.schema",
    "format_table": "lightning_eff.bench.table",
    "TASKS": "lightning_eff.bench.tasks",
    "BenchModule": "lightning_eff.bench.tasks",
    "BenchTask": "lightning_eff.bench.tasks",
    "get_task": "lightning_eff.bench.tasks",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
