"""The Dask task runner of the flows that fan out: sharded pool scoring and study cells."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


#: glibc malloc settings of local workers, in place of Dask's ``MALLOC_TRIM_THRESHOLD_=65536``
#: (which also pins the mmap threshold at 128 KiB): with it every batch's tensors went back to the
#: kernel and were faulted in again — a 5-epoch Gal-CNN fit took 1.8 M page faults and 21 s instead
#: of 38 k and 12.5 s, so study cells ran 1.7× slower on Dask than alone. Keep freed memory for the
#: next batch instead (a worker's footprint is its largest batch, a few hundred MB).
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                 "MALLOC_TOP_PAD_": str(256 << 20)}


def dask_task_runner(workers: int, address: str | None):
    """A ``prefect_dask.DaskTaskRunner`` on the cluster at ``address``, or on a local cluster of
    ``workers`` single-threaded processes on loopback, started with :data:`WORKER_MALLOC` (an
    existing cluster's workers keep their own environment)."""
    import dask
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # Read when the cluster's nannies are built, which happens in this process when the flow starts;
    # a value the user exported wins (Dask's own rule).
    dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC.items()})
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
