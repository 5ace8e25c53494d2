"""params.yaml ``stopping:``: validated once (errors name ``stopping[i].<field>``), declared in dvc.yaml."""

from pathlib import Path

import pytest

from tasks.pipeline import QUERY, dvc_yaml
from tasks.workspace import STOP_SET, STOPPING, ParamsError, parse_params, stopping_criteria

PATH = Path("/ws/params.yaml")


def parse(**raw):
    return parse_params({"classes": ["cat", "dog", "bird"], **raw}, PATH)


def test_criteria_from_params():
    params = parse(stopping=[{"name": "kappa_average", "threshold": 0.98, "window": 2},
                             {"name": "delta_f", "positive": "dog"}, {"name": "label_budget", "budget": 500}],
                   stopping_action="pause", stop_set_size=200)
    kappa, delta, budget = stopping_criteria(params)
    assert (kappa.threshold, kappa.window, delta.positive, budget.budget) == (0.98, 2, 1, 500)
    assert parse().stopping == [] and parse().stopping_action == "report" and stopping_criteria(parse()) == []
    binary = parse_params({"classes": ["no", "yes"], "stopping": [{"name": "delta_f"}]}, PATH)
    assert stopping_criteria(binary)[0].positive == 1  # the second class, as the papers' binary case


@pytest.mark.parametrize(("raw", "field", "match"), [
    ({"stopping": {"name": "kappa_average"}}, "stopping", "must be a list of criteria"),
    ({"stopping": [{"name": "kappa"}]}, "stopping[0].name", "must be one of"),
    ({"stopping": ["kappa_average"]}, "stopping[0].name", "must name a criterion"),
    ({"stopping": [{"name": "label_budget", "budget": 10}, {"name": "kappa_average", "threshold": 2}]},
     "stopping[1].threshold", "must be a number >= -1 and <= 1, got 2"),
    ({"stopping": [{"name": "label_budget"}]}, "stopping[0].budget", "is required"),
    ({"stopping": [{"name": "metric_plateau", "metric": "test_accuracy", "patiences": 3}]},
     "stopping[0].patiences", "is not an option of 'metric_plateau'"),
    ({"stopping": [{"name": "delta_f"}]}, "stopping[0].positive", "must name the class"),
    ({"stopping": [{"name": "delta_f", "positive": "fish"}]}, "stopping[0].positive", "must be one of the classes"),
    ({"stopping_action": "stop"}, "stopping_action", "must be 'report' or 'pause'"),
    ({"stop_set_size": 0}, "stop_set_size", "must be an integer >= 1"),
])
def test_bad_stopping_params_name_entry_and_field(raw, field, match):
    with pytest.raises(ParamsError, match=match) as err:
        parse(**raw)
    assert str(err.value).startswith(f"{PATH}: field {field!r} ")


def test_the_query_step_declares_what_the_decisions_read_and_write(tmp_path):
    stage = dvc_yaml(tmp_path)["stages"]["query"]
    assert {"stopping", "stop_set_size"} <= {p for p in stage["params"] if isinstance(p, str)}
    assert {STOP_SET: {"cache": False, "persist": True}} in stage["outs"]
    assert {STOPPING: {"cache": False}} in stage["metrics"]
    assert any(str(p).endswith("tasks/stopping.py") for p in QUERY.code_files())
