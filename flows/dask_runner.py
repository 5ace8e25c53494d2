"""The Dask task runner of the flows that fan out: sharded pool scoring and study cells."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def dask_task_runner(workers: int, address: str | None):
    """A ``prefect_dask.DaskTaskRunner`` on the cluster at ``address``, or on a local cluster of
    ``workers`` single-threaded processes on loopback (no dashboard)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


@contextmanager
def workers_report_here() -> Iterator[str]:
    """Make local Dask workers started inside the block report to this process's Prefect API.

    Workers are new processes: without ``PREFECT_API_URL`` in their environment each would start
    its own temporary Prefect server, and the task runs it executes (with their logs) would land
    there instead of under this flow in the UI. With no exported URL (this process runs on a
    temporary server), the URL this process's client talks to is exported for the block and
    removed after it. Workers of an existing cluster keep their own environment.

    Yields the API URL.
    """
    exported = os.environ.get("PREFECT_API_URL")
    if exported:
        yield exported
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
