"""al_lib: Bayesian active learning in PyTorch and NumPy.

Submodules are imported on first use so that ``import al_lib`` stays fast and
never pulls in orchestration libraries (prefect, dvc, great_expectations).
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "acquisition",
    "annotations",
    "atomic",
    "bayesian",
    "calibration",
    "data",
    "device",
    "export",
    "heuristics",
    "inference",
    "labels",
    "loop",
    "metrics",
    "models",
    "plotting",
    "prefix_cache",
    "sampling",
    "seeding",
    "training",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"al_lib.{name}")
    raise AttributeError(f"module 'al_lib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
