"""al_lib is a library: importing it must stay fast and pull in no orchestration."""

import subprocess
import sys

FORBIDDEN = ("prefect", "dvc", "great_expectations")


def test_import_al_lib_pulls_in_no_orchestration():
    code = (
        "import sys, al_lib, al_lib.heuristics, al_lib.data, al_lib.bayesian, al_lib.inference, "
        "al_lib.training, al_lib.metrics, al_lib.models, al_lib.loop\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bare_import_is_lazy():
    code = "import sys, al_lib\nassert 'torch' not in sys.modules, 'import al_lib loaded torch'\n"
    subprocess.run([sys.executable, "-c", code], check=True)
