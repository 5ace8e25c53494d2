"""`al labelstudio push/pull` against a real Label Studio 1.23 server on 127.0.0.1.

The server comes from its own venv, ``.venv-labelstudio/`` (scripts/test.sh installs it and a
migrated empty database to copy, so a start costs ~30 s instead of ~140 s). Annotators sign up
through the organisation's invite link and annotate through the REST API with their own tokens,
as they would through the web page. Then the next `al round` must train on exactly the labels
they agreed on.
"""

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import dvc.api
import pandas as pd
import pytest

from al_lib.annotations import AnnotationError, read_annotations
from flows.cli import EXIT_OK, main
from tasks import labelstudio
from tasks.workspace import LABEL_STUDIO_STATE

# Two real rounds and a Label Studio start: minutes on 2 loaded cores, beyond the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_api")]

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-labelstudio"
LS_BIN = LS_VENV / "bin" / "label-studio"
DB_TEMPLATE = LS_VENV / "al-db-template" / "label_studio.sqlite3"
ADMIN, PASSWORD = "admin@example.org", "al-test-password"
TOKEN = "al0test0token0" + "0123456789abcdef01234567"  # a legacy API token, set at startup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A Label Studio server on a free loopback port: ``(url, admin token, document root)``; the
    document root is pytest's base temp dir, so every test's workspace can be served."""
    if not LS_BIN.is_file():
        pytest.skip(f"Label Studio is not installed ({LS_BIN} missing): scripts/test.sh installs it "
                    "(python -m venv .venv-labelstudio && .venv-labelstudio/bin/pip install 'label-studio==1.23.*')")
    data = tmp_path_factory.mktemp("label-studio-data")
    root = tmp_path_factory.getbasetemp().resolve()
    if DB_TEMPLATE.is_file():  # migrated once at install: skips ~2 min of migrations
        shutil.copy(DB_TEMPLATE, data / DB_TEMPLATE.name)
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LABEL_STUDIO_USERNAME": ADMIN, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = (data / "server.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen([str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                             str(port), "--data-dir", str(data), "--enable-legacy-api-token"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - started > 400:
                pytest.fail(f"Label Studio did not start: {(data / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"\nLabel Studio up on {url} after {time.monotonic() - started:.1f} s")
        yield url, TOKEN, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    url, token, root = label_studio
    monkeypatch.setenv(labelstudio.URL_ENV, url)
    monkeypatch.setenv(labelstudio.KEY_ENV, token)
    monkeypatch.setenv(labelstudio.DOCUMENT_ROOT_ENV, str(root))  # what the server was started with
    return labelstudio.Client(url, token)


def sign_up(admin: labelstudio.Client, email: str) -> labelstudio.Client:
    """An annotator joins through the invite link (the sign-up form) and reads their own API token."""
    invite = admin.request("GET", "/api/invite")["invite_url"]
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.open(admin.url + invite).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode({"email": email, "password": "annotator-pass-1", "csrfmiddlewaretoken": csrf})
    browser.open(urllib.request.Request(admin.url + invite, data=form.encode(), headers={"Referer": admin.url + invite}))
    with browser.open(admin.url + "/api/current-user/token") as r:
        return labelstudio.Client(admin.url, json.loads(r.read())["token"])


def annotate(annotator: labelstudio.Client, task_id: int, label: str) -> None:
    annotator.request("POST", f"/api/tasks/{task_id}/annotations/", body={
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}],
        "lead_time": 3.0})


def project_tasks(client, project):
    return client.request("GET", f"/api/projects/{project}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"})


def labels_of(ws):
    return pd.read_csv(ws.path("data/labels.csv"), dtype=str, keep_default_na=False)


def test_push_annotate_pull_and_the_next_round_trains_on_exactly_the_agreed_labels(
        ls_env, make_workspace, tmp_path, capsys):
    admin = ls_env
    ws = make_workspace(labels="oracle")
    truth = ws.oracle_labels().set_index("id")["label"]
    seed = ws.oracle_labels()[~ws.oracle_labels()["id"].isin(labels_of(ws)["id"])].head(12)
    seed.assign(annotator="lead").to_csv(tmp_path / "seed.csv", index=False)
    assert main(["import-labels", str(ws.root), str(tmp_path / "seed.csv")]) == EXIT_OK
    assert main(["round", str(ws.root)]) == EXIT_OK
    queries = pd.read_csv(ws.query_paths(0)[0], dtype=str)
    capsys.readouterr()

    # push: a project with the class list, the images served from the workspace, predictions
    assert main(["labelstudio", "push", str(ws.root)]) == EXIT_OK
    assert "created Label Studio project" in capsys.readouterr().out
    project = json.loads(ws.path(LABEL_STUDIO_STATE).read_text())["project"]
    info = admin.request("GET", f"/api/projects/{project}")
    assert info["title"] == f"al {ws.root.name}" and all(f'value="{c}"' in info["label_config"]
                                                          for c in ws.params().classes)
    tasks = project_tasks(admin, project)
    assert [t["data"]["sample_id"] for t in tasks] == queries["id"].tolist()
    assert all(t["total_predictions"] == 1 for t in tasks)
    prediction = admin.request("GET", "/api/predictions", params={"task": tasks[0]["id"]})[0]
    assert prediction["result"][0]["value"]["choices"] == [queries["predicted_label"][0]]
    manifest = ws.manifest().set_index("id")["path"]
    req = urllib.request.Request(admin.url + tasks[0]["data"]["image"], headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(req) as r:
        assert r.read() == ws.path(manifest[queries["id"][0]]).read_bytes()

    # push again (and with the state file lost: found by title): no duplicate task
    ws.path(LABEL_STUDIO_STATE).unlink()
    assert main(["labelstudio", "push", str(ws.root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"updated Label Studio project {project}: 0 new task(s)" in out
    assert len(project_tasks(admin, project)) == len(queries)
    assert json.loads(ws.path(LABEL_STUDIO_STATE).read_text())["project"] == project

    # two annotators: alice answers every task right, bob agrees on one and disagrees on another
    alice, bob = sign_up(admin, "alice@example.org"), sign_up(admin, "bob@example.org")
    for t in tasks:
        annotate(alice, t["id"], truth[t["data"]["sample_id"]])
    agreed, disputed = tasks[0], tasks[1]
    annotate(bob, agreed["id"], truth[agreed["data"]["sample_id"]])
    wrong = next(c for c in ws.params().classes if c != truth[disputed["data"]["sample_id"]])
    annotate(bob, disputed["id"], wrong)

    # Label Studio's own JSON-MIN and CSV exports: read, and the disagreement named, not resolved
    for kind, suffix in (("JSON_MIN", "json"), ("CSV", "csv")):
        path = tmp_path / f"export-{kind}.{suffix}"
        req = urllib.request.Request(f"{admin.url}/api/projects/{project}/export?exportType={kind}",
                                     headers={"Authorization": f"Token {TOKEN}"})
        with urllib.request.urlopen(req) as r:
            path.write_bytes(r.read())
        with pytest.raises(AnnotationError) as info:
            read_annotations(path, known_ids=set(ws.manifest()["id"]), classes=ws.params().classes)
        assert len(info.value.errors) == 1 and info.value.field == "label"
        message = str(info.value)
        assert f"annotators disagree on sample {disputed['data']['sample_id']!r}" in message
        assert f"says {wrong!r}" in message and f"Label Studio task {disputed['id']}" in message

    # pull: the agreed tasks into the inbox, the disagreement held back and reported by name
    assert main(["labelstudio", "pull", str(ws.root)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert f"pulled {len(queries) - 1} annotated task(s)" in out
    assert (f"annotators disagree on sample {disputed['data']['sample_id']!r} (Label Studio task {disputed['id']})"
            in err and "alice@example.org says" in err and f"bob@example.org says {wrong!r}" in err
            and "held back" in err)
    assert TOKEN not in out + err
    inbox_file = ws.path(f"data/inbox/labelstudio-project-{project}.json")
    assert main(["labelstudio", "pull", str(ws.root)]) == EXIT_OK  # twice: the same file, no duplicates
    assert ws.inbox_files() == [inbox_file]

    assert main(["round", str(ws.root)]) == EXIT_OK
    labels = labels_of(ws)
    new = labels[labels["round"] == "1"].set_index("id")
    expected = [t["data"]["sample_id"] for t in tasks if t["id"] != disputed["id"]]
    assert sorted(new.index) == sorted(expected)
    assert (new["label"] == truth[new.index]).all() and set(new["source"]) == {"human"}
    assert new.loc[agreed["data"]["sample_id"], "annotator"] == "alice@example.org;bob@example.org"
    assert set(new.drop(agreed["data"]["sample_id"])["annotator"]) == {"alice@example.org"}
    # round 1 trained on exactly round 0's labels plus those: from git + DVC, and its metrics
    at_round1 = pd.read_csv(pd.io.common.StringIO(dvc.api.read("data/labels.csv", repo=str(ws.root), rev="round-1")),
                            dtype=str, keep_default_na=False)
    assert set(at_round1["id"]) == set(labels["id"])
    trained = json.loads(ws.path("metrics/train.json").read_text())["n_labelled"]
    assert trained == len(labels[~labels["id"].isin(ws.held_out_ids())])
    # the pulled export (every annotator's answer) is kept with the round
    kept = json.loads((ws.processed_dir(1) / inbox_file.name).read_text())
    assert sum(len(t["annotations"]) for t in kept) == len(expected) + 1

    # after the round: nothing new to pull; the held-back task still waits in Label Studio
    assert main(["labelstudio", "pull", str(ws.root)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "no new annotations" in out and "held back" in err


def test_push_refuses_a_workspace_outside_the_document_root_and_pull_needs_a_project(
        ls_env, make_workspace, tmp_path, monkeypatch, capsys):
    ws = make_workspace(labels="oracle")
    ws.path("data/queries").mkdir(parents=True)
    ws.query_paths(0)[1].write_text("[]\n")
    monkeypatch.setenv(labelstudio.DOCUMENT_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert main(["labelstudio", "push", str(ws.root)]) == 4
    assert "is not inside LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in capsys.readouterr().err
    assert main(["labelstudio", "pull", str(ws.root), "--title", "no such project"]) == 1
    assert "run `al labelstudio push" in capsys.readouterr().err
    # a personal access token (JWT) works as well as the legacy token
    pat = ls_env.request("POST", "/api/token/")["token"]
    assert labelstudio.Client(ls_env.url, pat).request("GET", "/api/current-user/whoami")["email"] == ADMIN
    monkeypatch.setenv(labelstudio.KEY_ENV, "wrong-token")
    assert main(["labelstudio", "pull", str(ws.root)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "LABEL_STUDIO_API_KEY" in err and "wrong-token" not in err
