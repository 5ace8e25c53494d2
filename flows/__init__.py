"""Prefect flows composing the round steps of tasks/ (and the `al` command)."""

import os

# The steps' own log lines (al_lib, tasks) reach the Prefect API and the UI's run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "al_lib,tasks")
# ... and, used outside a run (a notebook that imported flows), they log locally without a warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
