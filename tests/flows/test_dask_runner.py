"""The local Dask cluster of `--workers`: its workers' environment."""

import os

from prefect import flow, task

from flows.dask_runner import WORKER_MALLOC, dask_task_runner, workers_report_here


@task
def worker_environment() -> dict:
    return {k: os.environ.get(k) for k in WORKER_MALLOC}


def test_local_workers_keep_freed_memory_for_the_next_batch(prefect_api):
    """Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which made torch training
    fault every batch's memory in anew (1.7× slower cells); ours start with WORKER_MALLOC."""

    @flow
    def on_workers() -> dict:
        return worker_environment.submit().result()

    with workers_report_here():
        seen = on_workers.with_options(task_runner=dask_task_runner(1, None))()
    assert seen == WORKER_MALLOC
