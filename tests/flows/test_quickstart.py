"""docs/pipeline.md's quick start for an annotation team, run as a newcomer would follow it.

The doc is the test's source: each step is a fenced ``bash`` block after a marker
``<!-- quickstart: NAME [terminal=N] [retry=S] [expect="TEXT"] -->`` (``manual`` marks a step
done by hand, with no block). The blocks run in the doc's order, unchanged except for the two
ports (4200, 8080 → free ones), in a plain environment: a fresh ``HOME``, a system ``PATH``, no
other variable than what the doc exports. Terminal 1's blocks share one shell state (exports and
the working directory carry over, as in one terminal); a block of terminal 2, 3, … starts a shell
of its own that keeps running, after the doc's ``setup`` block ("in every terminal"). Every
``expect`` text must be in the step's output (terminal 1) or log (the others) and in the prose the
reader sees; then the test checks what the step promises. The manual step — annotate in the
browser — is done through Label Studio's REST API with the admin's token, as a browser would.

The real ``al server``, ``prefect`` worker and scheduler, and Label Studio from
``.venv-labelstudio`` (its migrated empty database copied in first: a later start, not the
first). Slow: minutes on 2 loaded cores.
"""

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest

from flows.server import is_healthy
from tasks import git_repo, labelstudio
from tasks.workspace import Workspace
from test_deployment import _free_port, _start, _stop, _tail
from test_labelstudio_server import DB_TEMPLATE, LS_BIN, annotate, project_tasks

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "pipeline.md"
SECTION = "## Quick start: an annotation team"
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT = 900  # a round trains ~10k samples: minutes on 2 loaded cores
READY_TIMEOUT = 300
STEPS = ["setup", "workspace", "prefect-server", "labelstudio-server", "deploy", "worker", "first-round",
         "schedule", "push", "annotate", "pull", "next-round"]

MARKER = re.compile(r"<!-- quickstart: (?P<name>[\w-]+)(?P<attrs>[^>]*?)-->\n")
ATTR = re.compile(r'(\w+)(?:=(?:"([^"]*)"|(\S+)))?')
BLOCK = re.compile(r"```bash\n(?P<code>.*?)\n```\n", re.S)


@dataclass
class Step:
    name: str
    code: str | None  # None: a manual step
    prose: str  # the doc's text from the marker to the next one
    terminal: int = 1
    expect: str | None = None
    retry: float = 0
    attrs: dict = field(default_factory=dict)


def quickstart_steps(text: str) -> list[Step]:
    """The quick start's steps, in the doc's order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else len(text)]
    markers = list(MARKER.finditer(section))
    steps = []
    for i, marker in enumerate(markers):
        body = section[marker.end():markers[i + 1].start() if i + 1 < len(markers) else len(section)]
        attrs = {m[1]: m[2] or m[3] or True for m in ATTR.finditer(marker["attrs"])}
        block = BLOCK.match(body)
        if "manual" in attrs:
            assert block is None, f"manual step {marker['name']} has a bash block"
        else:
            assert block, f"step {marker['name']}: no ```bash block right after its marker"
        steps.append(Step(marker["name"], block["code"] if block else None, body, int(attrs.get("terminal", 1)),
                          attrs.get("expect"), float(attrs.get("retry", 0)), attrs))
    return steps


def test_the_quick_start_is_well_formed():
    """Fast: the steps are there in order, and every promise is one the reader sees."""
    steps = quickstart_steps(DOC.read_text())
    assert [s.name for s in steps] == STEPS
    for step in steps:
        if step.expect:
            prose = BLOCK.sub("", step.prose)
            assert step.expect in prose, f"step {step.name}: the doc never tells the reader {step.expect!r}"
    assert "tests/flows/test_quickstart.py" in DOC.read_text()


class Terminal:
    """Terminal 1: one shell state (exports, working directory) across blocks."""

    def __init__(self, env: dict, state: Path):
        self.env, self.state, self.cwd = env, state, state.with_suffix(".cwd")
        state.write_text("")
        self.cwd.write_text(str(REPO_ROOT))

    def run(self, code: str, timeout: float = STEP_TIMEOUT) -> str:
        script = (f"set -eo pipefail\nsource {self.state}\ncd \"$(cat {self.cwd})\"\n{code}\n"
                  f"export -p > {self.state}\npwd > {self.cwd}\n")
        proc = subprocess.run(["bash", "-c", script], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{code}\n---\n{output[-4000:]}"
        return output

    def var(self, name: str) -> str:
        return self.run(f'printf %s "${name}"').strip()


def _wait(predicate, what: str, proc, log: Path, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"{what}: exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s:\n{_tail(log)}")
        time.sleep(0.5)


def _ls_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 93 s on 2 quiet cores
def test_the_quick_start_works_line_by_line(tmp_path):
    if not LS_BIN.is_file():
        pytest.skip(f"Label Studio is not installed ({LS_BIN} missing): bash scripts/install_labelstudio.sh")
    prefect_port, ls_port = _free_port(), _free_port()
    ports = {"4200": str(prefect_port), "8080": str(ls_port)}
    api, ls_url = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{ls_port}"
    home = tmp_path / "home"
    (home / "label-studio-data").mkdir(parents=True)
    if DB_TEMPLATE.is_file():  # Label Studio's database, migrated once at install: a later start (~30 s)
        shutil.copy(DB_TEMPLATE, home / "label-studio-data" / DB_TEMPLATE.name)
    plain = {"HOME": str(home), "PATH": PLAIN_PATH, "LANG": "C.UTF-8"}

    def local(text):
        for old, new in ports.items():
            text = text.replace(old, new)
        return text

    steps = quickstart_steps(DOC.read_text())
    assert [s.name for s in steps] == STEPS
    setup = steps[0].code
    t1 = Terminal(plain, tmp_path / "terminal-1.sh")
    background: list[tuple] = []  # (process, log)
    pending: list = []  # background steps started, not yet checked ready
    timings, ctx = {}, {}
    try:
        for step in steps:
            started = time.monotonic()
            if step.terminal != 1:
                log = tmp_path / f"terminal-{step.terminal}.log"
                proc = _start(["bash", "-c", f"set -eo pipefail\n{local(setup)}\n{local(step.code)}"], plain, log)
                background.append((proc, log))
                pending.append((step, proc, log, started))
                continue
            for waiting, proc, log, since in pending:  # a foreground step needs the servers up
                if waiting.name == "labelstudio-server":
                    _wait(lambda: _ls_answers(ls_url), waiting.name, proc, log)
                else:
                    _wait(lambda: local(waiting.expect) in _tail(log, 100_000), waiting.name, proc, log)
                CHECKS[waiting.name](ctx)
                timings[waiting.name] = time.monotonic() - since
            pending = []
            if step.code is None:
                output = ""
            else:
                deadline = time.monotonic() + step.retry
                while True:
                    output = t1.run(local(step.code))
                    if not step.expect or local(step.expect) in output or time.monotonic() > deadline:
                        break
                    time.sleep(5)
            if step.expect:
                assert local(step.expect) in output, f"step {step.name}: {step.expect!r} not in:\n{output[-4000:]}"
            if step.name == "setup":
                ws = Workspace(t1.var("WS"))
                ctx.update(api=api, ls=ls_url, home=home, ws=ws)
            ctx["output"] = output
            CHECKS[step.name](ctx)
            timings[step.name] = time.monotonic() - started
    except BaseException:
        for _, log in background:  # what the other terminals said: a failed run's traceback is there
            print(f"\n--- {log.name}:\n{_tail(log, 6000)}")
        raise
    finally:
        for proc, _ in reversed(background):
            _stop(proc)
    print("\nquick start step timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


# --------------------------------------------------------------------------- what each step promises


def _setup(ctx):
    assert ctx["ws"].root == ctx["home"] / "al-quickstart" / "ws"


def _workspace(ctx):
    ws = ctx["ws"]
    assert len(ws.manifest()) == 150 and ws.params().classes == ["0", "1", "2"]
    (waiting,) = ws.inbox_files()
    first = pd.read_csv(waiting, dtype=str)
    assert len(first) == 15 and first["label"].value_counts().to_dict() == {"0": 5, "1": 5, "2": 5}


def _prefect_server(ctx):
    assert is_healthy(ctx["api"])


def _labelstudio_server(ctx):
    token = (ctx["home"] / ".label-studio-token").read_text().strip()
    assert oct((ctx["home"] / ".label-studio-token").stat().st_mode & 0o777) == "0o600"
    ctx["admin"] = labelstudio.Client(ctx["ls"], token)
    assert ctx["admin"].request("GET", "/api/current-user/whoami")["email"] == "lead@example.org"


def _deploy(ctx):
    (deployment,) = httpx.post(f"{ctx['api']}/deployments/filter", json={}, timeout=10).json()
    assert deployment["name"] == "al-round-hourly" and deployment["work_pool_name"] == "al-process-pool"
    assert deployment["parameters"] == {"workspace": str(ctx["ws"].root), "simulate": False}
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 * * * *" and schedule["active"]
    ctx["deployment"] = deployment["id"]


def _worker(ctx):
    pools = httpx.post(f"{ctx['api']}/work_pools/al-process-pool/workers/filter", json={}, timeout=10).json()
    assert pools, "no worker polls al-process-pool"


def _runs(ctx, state_type: str) -> list[dict]:
    return httpx.post(f"{ctx['api']}/flow_runs/filter", json={"flow_runs": {
        "deployment_id": {"any_": [ctx["deployment"]]}, "state": {"type": {"any_": [state_type]}}}}, timeout=10).json()


def _first_round(ctx):
    ws = ctx["ws"]
    assert git_repo.list_round_tags(ws.root) == [0]
    assert "Completed" in ctx["output"]
    queries = pd.read_csv(ws.query_paths(0)[0], dtype=str)
    assert len(queries) == 20 and not set(queries["id"]) & set(ws.labels()["id"])
    ctx["queries"] = {0: queries}
    (run,) = _runs(ctx, "COMPLETED")
    assert run["name"] == "ws round 0" and not run["auto_scheduled"]


def _schedule(ctx):
    scheduled = _runs(ctx, "SCHEDULED")
    assert len(scheduled) >= 3 and all(r["auto_scheduled"] for r in scheduled)
    starts = sorted(pd.Timestamp(r["expected_start_time"]) for r in scheduled)
    assert all(t.minute == 0 and t.second == 0 for t in starts)  # on the hour
    assert {b - a for a, b in zip(starts, starts[1:])} == {pd.Timedelta(hours=1)}


def _push(ctx):
    tasks = project_tasks(ctx["admin"], 1)
    assert [t["data"]["sample_id"] for t in tasks] == ctx["queries"][0]["id"].tolist()
    assert all(t["total_predictions"] == 1 for t in tasks)
    assert ctx["admin"].request("GET", "/api/projects/1")["title"] == "al ws"


def _annotate(ctx):
    """What the annotator does in the browser: one answer (the true class) per task, Submit."""
    truth = ctx["ws"].oracle_labels().set_index("id")["label"]
    for task in project_tasks(ctx["admin"], 1):
        annotate(ctx["admin"], task["id"], truth[task["data"]["sample_id"]])


def _pull(ctx):
    (pulled,) = ctx["ws"].inbox_files()
    assert pulled.name == "labelstudio-project-1.json" and pulled.name in ctx["output"]


def _next_round(ctx):
    ws = ctx["ws"]
    assert git_repo.list_round_tags(ws.root) == [0, 1]
    assert "rounds tagged: round-0, round-1" in ctx["output"]
    labels = pd.read_csv(ws.path("data/labels.csv"), dtype=str, keep_default_na=False)
    new = labels[labels["round"] == "1"].set_index("id")
    truth = ws.oracle_labels().set_index("id")["label"]
    assert sorted(new.index) == sorted(ctx["queries"][0]["id"])
    assert (new["label"] == truth[new.index]).all() and set(new["source"]) == {"human"}
    assert set(new["annotator"]) == {"lead@example.org"}
    assert len(project_tasks(ctx["admin"], 1)) == 40


CHECKS = {"setup": _setup, "workspace": _workspace, "prefect-server": _prefect_server,
          "labelstudio-server": _labelstudio_server, "deploy": _deploy, "worker": _worker,
          "first-round": _first_round, "schedule": _schedule, "push": _push, "annotate": _annotate,
          "pull": _pull, "next-round": _next_round}
