"""Test-only fault points: a named place where the crash-safety tests kill the round process.

Most kill points of the fault-injection suite (tests/reliability/test_faults.py) are hit from the
outside, on an event the test observes (a log line, a child process). A few windows are too short
to hit that way — between two writes a few microseconds apart — so the code names them with
:func:`fault_point`: when the environment variable ``AL_FAULT_POINT`` equals the point's name, the
process SIGKILLs itself there, exactly as a power cut or the OOM killer would stop it. Unset (always,
outside those tests) it does nothing but read one environment variable.

The points (see docs/reliability.md):

- ``ingest:labels-written``: the labels file holds the inbox's labels, the inbox files are not
  moved aside yet (tasks/ingest.py);
- ``record:committed``: the round's commit exists, its ``round-N`` tag does not (tasks/rounds.py).
"""

from __future__ import annotations

import os
import signal

#: The environment variable naming the fault point to die at.
FAULT_ENV = "AL_FAULT_POINT"
#: Every fault point the code has (a name not listed here is refused, so a typo cannot make a test
#: pass by never killing anything).
FAULT_POINTS = ("ingest:labels-written", "record:committed")


def fault_point(name: str) -> None:
    """SIGKILL this process when ``AL_FAULT_POINT`` is ``name``; otherwise return at once.

    Parameters
    ----------
    name : str
        One of :data:`FAULT_POINTS`.

    Raises
    ------
    ValueError
        ``name`` (or the variable's value, when set) is no known fault point.
    """
    wanted = os.environ.get(FAULT_ENV)
    if name not in FAULT_POINTS or (wanted and wanted not in FAULT_POINTS):
        raise ValueError(f"unknown fault point {wanted if name in FAULT_POINTS else name!r} "
                         f"(known: {', '.join(FAULT_POINTS)})")
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
