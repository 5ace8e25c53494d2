"""params.yaml ``heuristic`` / ``initial_strategy``: names, the mapping form with options, and
errors naming ``heuristic.<option>`` (tasks/strategy.py, checked by tasks/workspace.py)."""

import pytest

from al_lib.strategies import available_strategies
from tasks.strategy import strategy_options, workspace_strategy
from tasks.workspace import ParamsError, parse_params


@pytest.mark.parametrize(("heuristic", "field", "match"), [
    ({"name": "probcover", "delta": -1}, "heuristic.delta", "delta must be a number > 0"),
    ({"name": "probcover", "radius": 1}, "heuristic.radius", "not an option of 'probcover'"),
    ({"name": "epig", "target": "train"}, "heuristic.target", r"one of \['pool', 'held_out'\]"),
    ({"name": "badge", "max_candidates": 0}, "heuristic.max_candidates", "int >= 1"),
    ({"name": "coreset", "max_candidates": [1]}, "heuristic.max_candidates", "a number, a string or null"),
    ({"delta": 1}, "heuristic.name", "must name the strategy"),
])
def test_strategy_options_are_validated_naming_the_field(heuristic, field, match, tmp_path):
    with pytest.raises(ParamsError, match=f"field '{field}'.*{match}"):
        parse_params({"classes": ["a", "b"], "heuristic": heuristic}, tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="field 'initial_strategy' must be one of"):
        parse_params({"classes": ["a", "b"], "initial_strategy": "bald"}, tmp_path / "params.yaml")


def test_strategy_options_round_trip_through_params_yaml(tmp_path):
    params = parse_params({"classes": ["a", "b"], "heuristic": {"name": "probcover", "delta": 0.5},
                           "initial_strategy": "typiclust"}, tmp_path / "params.yaml")
    assert (params.heuristic, params.strategy_options, params.initial_strategy) == ("probcover", {"delta": 0.5},
                                                                                    "typiclust")
    assert params.as_dict()["heuristic"] == {"name": "probcover", "delta": 0.5}
    assert parse_params(params.as_dict(), tmp_path / "params.yaml") == params
    assert parse_params({"classes": ["a", "b"]}, tmp_path / "params.yaml").as_dict()["heuristic"] == "bald"


def test_every_strategy_builds_with_the_workspace_defaults(tmp_path):
    for name in available_strategies():
        params = parse_params({"classes": ["a", "b", "c"], "heuristic": name}, tmp_path / "params.yaml")
        strategy = workspace_strategy(params)
        assert strategy.name == name
    assert workspace_strategy(parse_params({"classes": ["a", "b", "c"], "heuristic": "probcover"},
                                           tmp_path / "params.yaml")).n_clusters == 3  # automatic delta
    assert workspace_strategy(parse_params({"classes": ["a", "b"], "heuristic": "batch_bald"},
                                           tmp_path / "params.yaml")).num_candidates == 2048
    assert {"delta", "alpha", "n_clusters", "max_candidates"} == strategy_options("probcover", 3)
    assert "heuristic" in strategy_options("class_balanced", 3) and "heuristic" not in strategy_options("bald", 3)
