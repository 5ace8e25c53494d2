"""tasks.labelstudio without a server: configuration from the environment, URLs under the
document root, a refused connection. The live server tests are tests/flows/test_labelstudio_server.py."""

import socket

import pytest

from al_lib.export import LOCAL_FILES_URL
from tasks import labelstudio
from tasks.workspace import Workspace


def test_the_token_comes_from_the_environment_and_never_shows(monkeypatch):
    with pytest.raises(labelstudio.LabelStudioError, match="set LABEL_STUDIO_API_KEY"):
        labelstudio.Client.from_env({})
    client = labelstudio.Client.from_env({labelstudio.KEY_ENV: " s3cret ", labelstudio.URL_ENV: "http://h:1/"})
    assert (client.url, client.api_key) == ("http://h:1", "s3cret")
    assert "s3cret" not in repr(client)
    assert labelstudio.Client.from_env({labelstudio.KEY_ENV: "k"}).url == labelstudio.DEFAULT_URL


def test_an_unreachable_server_says_where_it_looked():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = labelstudio.Client(f"http://127.0.0.1:{port}", "s3cret", timeout=5)
    with pytest.raises(labelstudio.LabelStudioError) as info:
        client.request("GET", "/api/projects")
    assert f"cannot reach Label Studio at http://127.0.0.1:{port}" in str(info.value)
    assert "LABEL_STUDIO_URL" in str(info.value) and "s3cret" not in str(info.value)


def test_image_urls_are_made_relative_to_the_servers_document_root(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "team a" / "ws")
    ws.root.mkdir(parents=True)
    task = {"data": {"image": LOCAL_FILES_URL + "data/pool/images/x%201.png", "sample_id": "x 1"}}
    monkeypatch.delenv(labelstudio.DOCUMENT_ROOT_ENV, raising=False)
    assert labelstudio._image_prefix(ws) == LOCAL_FILES_URL  # the workspace is the document root
    assert labelstudio._served_from(task, LOCAL_FILES_URL) is task
    monkeypatch.setenv(labelstudio.DOCUMENT_ROOT_ENV, str(tmp_path))
    prefix = labelstudio._image_prefix(ws)
    assert prefix == LOCAL_FILES_URL + "team%20a/ws/"
    moved = labelstudio._served_from(task, prefix)
    assert moved["data"] == {"image": LOCAL_FILES_URL + "team%20a/ws/data/pool/images/x%201.png", "sample_id": "x 1"}
    assert task["data"]["image"] == LOCAL_FILES_URL + "data/pool/images/x%201.png"  # the input is not changed
    monkeypatch.setenv(labelstudio.DOCUMENT_ROOT_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="is not inside LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        labelstudio._image_prefix(ws)


def test_project_title_is_stable_per_workspace_folder(tmp_path):
    assert labelstudio.project_title(Workspace(tmp_path / "digits")) == "al digits"


def test_al_labelstudio_config_prints_the_labelling_config_of_the_class_list(tmp_path, capsys):
    from flows.cli import EXIT_OK, main

    (tmp_path / "params.yaml").write_text("classes: [cat, 'dog & wolf']\n")
    assert main(["labelstudio", "config", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("<View>") and '<Choice value="cat"/>' in out and '<Choice value="dog &amp; wolf"/>' in out
