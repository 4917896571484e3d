"""`smol sweep`: Optuna over learning rate and batch size (and more), trials being training runs.

In parts: `spec` (the sweep file), `storage` (Optuna storage and its compatibility workarounds),
`runner` (study, objective, worker processes). The tables are `smollm.results.write_sweep_results`.
Workers send heartbeats: a worker killed mid-trial leaves a trial that is failed and retried.
"""

from smollm.sweep.runner import open_study, optimize, run_sweep, run_worker
from smollm.sweep.spec import Param, Sweep, load_sweep, sweep_from_mapping
from smollm.sweep.storage import best_params, display_url, load_study, make_storage, storage_url

__all__ = [
    "Param",
    "Sweep",
    "best_params",
    "display_url",
    "load_study",
    "load_sweep",
    "make_storage",
    "open_study",
    "optimize",
    "run_sweep",
    "run_worker",
    "storage_url",
    "sweep_from_mapping",
]
