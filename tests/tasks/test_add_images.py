"""`al add-images` on a real git + DVC workspace with real MNIST PNG files.

One workspace is made per module (`al init` costs several DVC calls) and copied for each test.
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tasks.add_images import AddImagesError, add_images
from tasks.commands import VersioningError
from tasks.create import create_workspace
from tasks.demo import write_mnist_folder
from tasks.validation import load_and_validate

MANIFEST = "data/pool/manifest.csv"
LABELS = "data/labels.csv"
IMAGES = "data/pool/images"
CACHE = ".al/image-checks.json"
DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workspace of 24 labelled digits (0 and 1), and a flat folder of 6 new digits (2)."""
    tmp = tmp_path_factory.mktemp("add-images")
    seed_images = write_mnist_folder(tmp / "seed", n=24, classes=(0, 1))
    ws = create_workspace(tmp / "ws", images=seed_images, labels="seed").root
    new = write_mnist_folder(tmp / "new", n=6, split="test", classes=(2,)) / "2"
    age(ws / IMAGES)
    return ws, new, seed_images


@pytest.fixture
def ws(base, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(base[0], root, symlinks=True)
    return root


@pytest.fixture
def new_images(base, tmp_path):
    folder = tmp_path / "new"
    shutil.copytree(base[1], folder)
    return folder


def age(folder, seconds=60):
    """Date files back past the image checks' racy window (as a pool written before a round)."""
    past = time.time() - seconds
    for path in Path(folder).rglob("*.png"):
        os.utime(path, (past, past))


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def state(root):
    """Everything add-images may touch: manifest, labels, images.dvc, the pool files, git HEAD and status."""
    return {
        "manifest": (root / MANIFEST).read_bytes(),
        "labels": (root / LABELS).read_bytes(),
        "images.dvc": (root / f"{IMAGES}.dvc").read_bytes(),
        "pool": sorted(p.name for p in (root / IMAGES).iterdir()),
        "head": git(root, "rev-parse", "HEAD"),
        "status": git(root, "status", "--porcelain"),
    }


def broken_idat_png(path):
    """A PNG with valid CRCs whose compressed pixel stream is corrupt (Image.verify() passes it)."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), color=9).save(buffer, "PNG")
    data, out, position = buffer.getvalue(), buffer.getvalue()[:8], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        if kind == b"IDAT":
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:-4]) + body[-4:]
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        position += 12 + length
    path.write_bytes(out)


def test_new_images_join_the_pool_in_one_commit(ws, new_images):
    classes = ["0", "1"]
    assert load_and_validate(ws, classes, image_cache=ws / CACHE).image_checks["checked"] == 24
    before = state(ws)
    kept = ws / IMAGES / before["pool"][0]
    kept_stat = (kept.stat().st_ino, kept.stat().st_mtime_ns)

    added = add_images(ws, new_images, image_cache=ws / CACHE)

    names = sorted(p.name for p in new_images.iterdir())
    assert added.ids == names and added.paths == [f"{IMAGES}/{n}" for n in names] and added.n_pool == 30
    manifest = (ws / MANIFEST).read_bytes()
    assert manifest.startswith(before["manifest"])  # existing rows keep their bytes
    assert manifest[len(before["manifest"]):].decode().splitlines() == [f"{n},{IMAGES}/{n}" for n in names]
    for name in names:
        assert (ws / IMAGES / name).read_bytes() == (new_images / name).read_bytes()
    assert (ws / LABELS).read_bytes() == before["labels"]  # unlabelled
    # One commit with exactly the manifest and images.dvc; nothing left uncommitted.
    assert git(ws, "rev-parse", "HEAD~1") == before["head"]
    assert added.commit == git(ws, "rev-parse", "HEAD").strip()
    assert sorted(git(ws, "show", "--name-only", "--format=", "HEAD").split()) == [f"{IMAGES}.dvc", MANIFEST]
    assert git(ws, "status", "--porcelain") == ""
    assert subprocess.run([DVC, "status", "--json", f"{IMAGES}.dvc"], cwd=ws, capture_output=True,
                          text=True, check=True).stdout.strip() == "{}"
    assert yaml.safe_load((ws / f"{IMAGES}.dvc").read_text())["outs"][0]["nfiles"] == 30
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == kept_stat  # what was there was not touched

    report = load_and_validate(ws, classes, image_cache=ws / CACHE)
    assert report.success and report.statistics["n_manifest"] == 30
    # The new images were decoded by add-images: the round's validation only hashes them.
    assert report.image_checks == {"checked": 0, "remembered": 30, "hashed": 6}


def test_split_adds_the_column(ws, new_images):
    before = (ws / MANIFEST).read_text().splitlines()
    add_images(ws, new_images, split="test")
    lines = (ws / MANIFEST).read_text().splitlines()
    assert lines[0] == "id,path,split"
    assert lines[1:len(before)] == [line + "," for line in before[1:]]
    assert all(line.endswith(",test") for line in lines[len(before):]) and len(lines) == len(before) + 6


def test_an_id_already_in_the_pool_changes_nothing(ws, new_images):
    add_images(ws, new_images)
    before = state(ws)
    first = sorted(os.listdir(new_images))[0]
    (new_images / "zz-extra.png").write_bytes((new_images / first).read_bytes())
    with pytest.raises(AddImagesError) as refused:
        add_images(ws, new_images)
    message = str(refused.value)
    assert f"{new_images / first}: id '{first}' is already in {MANIFEST} (row 26)" in message
    assert message.startswith("6 new ids or files clash — nothing was added")
    assert state(ws) == before  # not even zz-extra.png, which was new


def test_a_taken_destination_is_refused(ws, new_images):
    name = sorted(os.listdir(new_images))[0]
    (ws / IMAGES / name).write_bytes(b"someone else's file")
    with pytest.raises(AddImagesError, match=f"{IMAGES}/{name} exists .not in {MANIFEST}. with other content"):
        add_images(ws, new_images)
    assert (ws / IMAGES / name).read_bytes() == b"someone else's file"


def test_a_broken_image_changes_nothing(ws, new_images):
    broken_idat_png(new_images / "broken.png")
    with Image.open(new_images / "broken.png") as image:
        image.verify()  # a check that only verifies would let it in
    before = state(ws)
    with pytest.raises(AddImagesError) as refused:
        add_images(ws, new_images)
    assert f"{new_images / 'broken.png'}: id 'broken.png' does not decode (OSError: broken data stream" in str(
        refused.value)
    assert state(ws) == before


def test_class_subfolders_are_refused(ws, base):
    before = state(ws)
    with pytest.raises(AddImagesError, match=r"has class subfolders \(0, 1\).*adds unlabelled pool images"):
        add_images(ws, base[2])
    assert state(ws) == before


def test_a_failed_commit_puts_everything_back(ws, new_images):
    before = state(ws)
    lock = ws / ".git/index.lock"  # git refuses to stage or commit while it exists
    lock.write_text("")
    with pytest.raises(VersioningError):
        add_images(ws, new_images)
    lock.unlink()
    assert state(ws) == before
    added = add_images(ws, new_images)  # and a retry works
    assert added.n_pool == 30


def test_cli(ws, new_images, capsys):
    assert main(["add-images", str(ws), str(new_images)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "added 6 unlabelled images to the pool" in out and "30 in all" in out
    assert main(["add-images", str(ws), str(new_images)]) == EXIT_BAD_INPUT
    assert "is already in data/pool/manifest.csv" in capsys.readouterr().err
    assert main(["add-images", str(ws), str(ws / "nope")]) == EXIT_BAD_INPUT
