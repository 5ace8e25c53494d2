"""tasks.fault_points: a named point kills its process only when AL_FAULT_POINT names it."""

import os
import signal
import subprocess
import sys

import pytest

from tasks.fault_points import FAULT_ENV, FAULT_POINTS, fault_point

SCRIPT = "from tasks.fault_points import fault_point\nfault_point({name!r})\nprint('survived', flush=True)\n"


def _run(name: str, wanted: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if wanted is not None:
        env[FAULT_ENV] = wanted
    return subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_named_point_sigkills_its_process():
    proc = _run("record:committed", "record:committed")
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout


@pytest.mark.parametrize("wanted", [None, "", "ingest:labels-written"])
def test_other_points_and_an_unset_variable_do_nothing(wanted):
    proc = _run("record:committed", wanted)
    assert proc.returncode == 0 and proc.stdout == "survived\n", proc.stderr


def test_unknown_names_are_refused(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    with pytest.raises(ValueError, match="unknown fault point 'nowhere'"):
        fault_point("nowhere")
    monkeypatch.setenv(FAULT_ENV, "ingest:labels-writen")  # a typo must not pass as "never reached"
    with pytest.raises(ValueError, match="unknown fault point 'ingest:labels-writen'"):
        fault_point(FAULT_POINTS[0])
