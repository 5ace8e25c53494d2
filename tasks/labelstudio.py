"""`al labelstudio push/pull`: a workspace's queries in a live Label Studio project, and the answers back.

``push`` creates (or finds again) the workspace's project — the labelling config from the class
list (:func:`al_lib.export.label_studio_config`), a Local Files storage on the workspace so the
server can serve its images, and the round's query tasks (``data/queries/round-N.labelstudio.json``,
the model's prediction as pre-annotation) that the project does not hold yet: pushing twice adds
nothing. The project's id is remembered in ``.al/labelstudio.json``; without it (a fresh clone)
the project is found again by its title.

``pull`` exports the project's annotations (Label Studio's "JSON" export) and writes the tasks
that are ready into ``data/inbox/labelstudio-project-<id>.json``: the next ``al round`` ingests that
file through the same validated import as any inbox file (:func:`al_lib.annotations.read_annotations`),
and the file is checked by that import before ``pull`` returns. Every annotator's answer stays in
the file (and in ``data/inbox/processed/`` after ingest); tasks whose annotators disagree are held
back — reported, naming task, sample, annotators and labels — and stay in Label Studio until the
answers agree.

Environment (never logged):

- ``LABEL_STUDIO_URL``: the server, default ``http://localhost:8080``;
- ``LABEL_STUDIO_API_KEY``: an access token (Account & Settings in Label Studio): a legacy token,
  sent as ``Authorization: Token …``, or a personal access token (a JWT), exchanged for an access
  token at ``/api/token/refresh``;
- ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``: the server's document root, when it is not the
  workspace itself (the workspace must lie inside it); the same variable the server reads.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from al_lib import label_studio
from al_lib.export import LOCAL_FILES_URL, label_studio_config
from tasks.workspace import IMAGES_DIR, INBOX, LABEL_STUDIO_STATE, Workspace, write_file

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8080"
URL_ENV, KEY_ENV, DOCUMENT_ROOT_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
_PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """The server refused a request or cannot be reached; the message names the request, never the token."""


@dataclass
class Client:
    """A small Label Studio REST client (stdlib ``urllib``).

    Parameters
    ----------
    url : str
        Server root, e.g. ``http://127.0.0.1:8080``.
    api_key : str
        Legacy token or personal access token (JWT refresh token); kept out of ``repr`` and logs.
    timeout : float
        Seconds per request.
    """

    url: str
    api_key: str = field(repr=False)
    timeout: float = 60.0
    _auth: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Client":
        """The client of ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``.

        Raises
        ------
        LabelStudioError
            ``LABEL_STUDIO_API_KEY`` is not set.
        """
        environ = os.environ if environ is None else environ
        key = environ.get(KEY_ENV, "").strip()
        if not key:
            raise LabelStudioError(f"set {KEY_ENV} to your Label Studio access token (Account & Settings → "
                                   f"Access Token) and {URL_ENV} to the server (default {DEFAULT_URL})")
        return cls(environ.get(URL_ENV, "").strip() or DEFAULT_URL, key)

    def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None) -> Any:
        """Send one request; the parsed JSON answer (None when empty).

        Raises
        ------
        LabelStudioError
            Connection failure or an HTTP error (status and the server's message).
        """
        return self._send(method, path, params, body, self._authorization())

    def _send(self, method: str, path: str, params: dict | None, body: Any, auth: str | None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = auth
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:1000].strip()
            for secret in {self.api_key, (auth or "").partition(" ")[2]} - {""}:  # a server may echo them
                detail = detail.replace(secret, "***")
            hint = f" (check {KEY_ENV})" if err.code in (401, 403) else ""
            raise LabelStudioError(f"Label Studio {method} {path}: HTTP {err.code}{hint}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({reason}): is the server running? "
                                   f"({URL_ENV})") from None
        return json.loads(text) if text.strip() else None

    def _authorization(self) -> str:
        if self._auth is None:
            if self.api_key.count(".") == 2:  # a personal access token (JWT): trade it for an access token
                answer = self._send("POST", "/api/token/refresh/", None, {"refresh": self.api_key}, None)
                self._auth = f"Bearer {answer['access']}"
            else:
                self._auth = f"Token {self.api_key}"
        return self._auth

    def pages(self, path: str, params: dict | None = None) -> list[dict]:
        """Every item of a paginated list endpoint (``results`` + ``next``), or of a plain list."""
        items, page = [], 1
        while True:
            answer = self.request("GET", path, params={**(params or {}), "page": page, "page_size": _PAGE_SIZE})
            if isinstance(answer, list):
                return answer
            items += answer.get("results", [])
            if not answer.get("next"):
                return items
            page += 1


# ---------------------------------------------------------------------- the workspace's project


def project_title(ws: Workspace) -> str:
    """The default project title: ``"al <workspace folder name>"``."""
    return f"al {ws.root.name}"


def find_project(ws: Workspace, client: Client, title: str | None = None) -> dict | None:
    """The workspace's project: by the id in ``.al/labelstudio.json``, else by exact title; None if absent."""
    title = title or project_title(ws)
    state = _read_state(ws)
    if state.get("url") == client.url and state.get("title") == title and isinstance(state.get("project"), int):
        try:
            return client.request("GET", f"/api/projects/{state['project']}")
        except LabelStudioError as err:
            if "HTTP 404" not in str(err):
                raise
            logger.info("project %s recorded in %s is gone; looking it up by title", state["project"],
                        LABEL_STUDIO_STATE)
    matches = [p for p in client.pages("/api/projects", {"title": title}) if p.get("title") == title]
    if len(matches) > 1:
        raise LabelStudioError(f"{len(matches)} Label Studio projects are titled {title!r} "
                               f"(ids {[p['id'] for p in matches]}): rename the extra ones or pass --title")
    if matches:
        _write_state(ws, client, title, matches[0]["id"])
    return matches[0] if matches else None


def push(ws: Workspace, client: Client, *, round: int | None = None, title: str | None = None) -> dict:
    """Create or update the workspace's project and add the round's query tasks it lacks.

    Parameters
    ----------
    ws : Workspace
    client : Client
    round : int, optional
        Whose queries to push; default the workspace's round (``round.yaml``).
    title : str, optional
        Project title; default :func:`project_title`.

    Returns
    -------
    dict
        ``project`` (id), ``url`` (the project page), ``round``, ``n_new`` (tasks added),
        ``n_present`` (already in the project), ``created`` (a new project).

    Raises
    ------
    FileNotFoundError
        The round has no exported queries yet.
    ValueError
        The workspace lies outside ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``.
    LabelStudioError
        The server refused a request (its message says why).
    """
    params = ws.params()
    round = ws.round() if round is None else round
    tasks_file = ws.query_paths(round)[1]
    if not tasks_file.is_file():
        raise FileNotFoundError(f"{tasks_file}: round {round} has no queries yet (run `al round {ws.root}` first)")
    prefix = _image_prefix(ws)
    tasks = [_served_from(task, prefix) for task in json.loads(tasks_file.read_text(encoding="utf-8"))]
    title = title or project_title(ws)
    config = label_studio_config(params.classes)
    project, created = find_project(ws, client, title), False
    if project is None:
        project = client.request("POST", "/api/projects", body={
            "title": title, "label_config": config,
            "description": f"Active-learning queries of the workspace {ws.root} (`al labelstudio push`)"})
        created = True
        _write_state(ws, client, title, project["id"])
        logger.info("created Label Studio project %d %r", project["id"], title)
    elif project.get("label_config") != config:
        client.request("PATCH", f"/api/projects/{project['id']}", body={"label_config": config})
        logger.info("updated the labelling config of project %d to classes %s", project["id"], params.classes)
    pid = project["id"]
    _ensure_storage(client, pid, ws.path(IMAGES_DIR).resolve())
    present = {str(t.get("data", {}).get("sample_id")) for t in _all_tasks(client, pid)}
    new = [t for t in tasks if str(t["data"]["sample_id"]) not in present]
    if new:
        client.request("POST", f"/api/projects/{pid}/import", body=new)
    logger.info("project %d: %d new task(s) from round %d, %d already there", pid, len(new), round,
                len(tasks) - len(new))
    return {"project": pid, "url": f"{client.url}/projects/{pid}", "round": round, "n_new": len(new),
            "n_present": len(tasks) - len(new), "created": created}


def pull(ws: Workspace, client: Client, *, title: str | None = None) -> dict:
    """Bring the project's finished annotations into the inbox, holding disagreements back.

    Parameters
    ----------
    ws : Workspace
    client : Client
    title : str, optional
        Project title; default :func:`project_title`.

    Returns
    -------
    dict
        ``project``; ``file`` (the inbox file, relative to the workspace, or None when nothing
        is new); ``n_tasks`` (annotated tasks written); ``n_labelled`` (tasks whose sample
        ``labels.csv`` already holds, left out); ``held_back`` (one message per disagreement);
        ``changed`` (one message per already labelled sample Label Studio now labels otherwise).

    Raises
    ------
    LabelStudioError
        No project for the workspace, or the server refused.
    AnnotationError
        The export does not pass the inbox's validation (unknown class, ...); nothing is left
        in the inbox.
    """
    from tasks.ingest import check_inbox

    project = find_project(ws, client, title)
    if project is None:
        raise LabelStudioError(f"no Label Studio project {title or project_title(ws)!r} on {client.url}: "
                               f"run `al labelstudio push {ws.root}` first")
    pid = project["id"]
    tasks = client.request("GET", f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    _name_annotators(client, tasks)
    kept, disagreements = label_studio.split_disagreements(tasks)
    labels = ws.labels().set_index("id")
    fresh, changed, n_labelled = [], [], 0
    for task in kept:
        answers, _, _ = label_studio.json_answers([task])
        sample = str(task.get("data", {}).get("sample_id"))
        if not answers:  # every annotation cancelled (skipped)
            continue
        if sample not in labels.index:
            fresh.append(task)
            continue
        n_labelled += 1
        old = labels.loc[sample]
        if answers[0].label != old["label"]:
            changed.append(f"sample {sample!r} is labelled {old['label']!r} in labels.csv (round {old['round']}) "
                           f"but {answers[0].label!r} in Label Studio task {task.get('id')}: not pulled")
    held = [d.message(None, outcome="held back", then="pull again") for d in disagreements]
    summary = {"project": pid, "file": None, "n_tasks": len(fresh), "n_labelled": n_labelled, "held_back": held,
               "changed": changed}
    for message in held + changed:  # the caller reports them (the CLI on stderr)
        logger.debug("%s", message)
    if not fresh:
        logger.info("project %d: no new annotations to pull", pid)
        return summary
    path = ws.path(INBOX) / f"labelstudio-project-{pid}.json"
    before = path.read_bytes() if path.is_file() else None
    write_file(path, json.dumps(fresh, indent=2, ensure_ascii=False) + "\n")
    try:
        check_inbox(ws, [path])  # the very import the next round runs
    except Exception:
        if before is None:
            path.unlink()
        else:
            write_file(path, before)
        raise
    summary["file"] = str(path.relative_to(ws.root))
    logger.info("project %d: %d annotated task(s) written to %s", pid, len(fresh), summary["file"])
    return summary


# ---------------------------------------------------------------------- helpers


def _image_prefix(ws: Workspace) -> str:
    """The Local Files URL prefix of the workspace's files under the server's document root."""
    root = Path(os.environ.get(DOCUMENT_ROOT_ENV) or ws.root).resolve()
    try:
        inside = ws.root.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"the workspace {ws.root} is not inside {DOCUMENT_ROOT_ENV}={root}: start Label Studio "
                         "with a document root that contains it") from None
    return LOCAL_FILES_URL + ("" if inside == "." else urllib.parse.quote(inside, safe="/") + "/")


def _served_from(task: dict, prefix: str) -> dict:
    """``task`` with its Local Files image URL relative to the server's document root."""
    image = task.get("data", {}).get("image", "")
    if prefix == LOCAL_FILES_URL or not image.startswith(LOCAL_FILES_URL):
        return task
    return {**task, "data": {**task["data"], "image": prefix + image[len(LOCAL_FILES_URL):]}}


def _ensure_storage(client: Client, project: int, images: Path) -> None:
    """A Local Files storage holding ``images`` (the pool's image folder): Label Studio serves
    ``/data/local-files/`` only under one. The storage is the image folder, not the workspace,
    because Label Studio refuses a storage on its document root itself, which the workspace is when
    the server was started with ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to it."""
    storages = client.request("GET", "/api/storages/localfiles", params={"project": project})
    if any(s.get("path") and images.is_relative_to(Path(s["path"])) for s in storages):
        return
    client.request("POST", "/api/storages/localfiles", body={
        "project": project, "path": str(images), "title": "workspace images", "use_blob_urls": True})
    logger.info("project %d: Local Files storage on %s", project, images)


def _all_tasks(client: Client, project: int) -> list[dict]:
    return client.request("GET", f"/api/projects/{project}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"})


def _name_annotators(client: Client, tasks: list) -> None:
    """Replace annotations' numeric ``completed_by`` by ``{"id", "email"}`` (the export has ids only)."""
    try:
        emails = {u["id"]: u.get("email") for u in client.request("GET", "/api/users")}
    except LabelStudioError as err:  # a token without the right to list users: ids stay
        logger.info("cannot list Label Studio users (%s): annotators stay user ids", err)
        return
    for task in tasks if isinstance(tasks, list) else []:
        for annotation in task.get("annotations", []) if isinstance(task, dict) else []:
            user = annotation.get("completed_by") if isinstance(annotation, dict) else None
            if isinstance(user, int) and emails.get(user):
                annotation["completed_by"] = {"id": user, "email": emails[user]}


def _read_state(ws: Workspace) -> dict:
    path = ws.path(LABEL_STUDIO_STATE)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(ws: Workspace, client: Client, title: str, project: int) -> None:
    write_file(ws.path(LABEL_STUDIO_STATE),
               json.dumps({"url": client.url, "title": title, "project": project}, indent=2) + "\n")
