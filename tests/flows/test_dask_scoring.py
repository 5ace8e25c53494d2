"""Pool scoring sharded over a real Dask scheduler and workers on loopback equals one process."""

import numpy as np
import pandas as pd
import pytest

from flows.round import al_round
from tasks.scores_file import load_scores

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


def test_sharded_scores_and_queries_equal_single_process(make_workspace, dask_cluster, dvc_status):
    single = make_workspace("single")
    sharded = make_workspace("sharded")
    al_round(str(single.root), simulate=True)
    al_round(str(sharded.root), simulate=True, workers=3, dask_address=dask_cluster.scheduler_address)

    a, b = load_scores(single), load_scores(sharded)
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["mean_probs"], b["mean_probs"], rtol=1e-5, atol=1e-6)
    qa = pd.read_csv(single.query_paths(0)[0], dtype=str)
    qb = pd.read_csv(sharded.query_paths(0)[0], dtype=str)
    assert qa["id"].tolist() == qb["id"].tolist()
    assert dvc_status(sharded.root) == {}  # the sharded score step is recorded too
