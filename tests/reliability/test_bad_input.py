"""The bad-input catalogue: each bad input a user or another tool can hand `al`, one test each.

Every case builds the input on a small real workspace (made once per module by `al init`, copied
per case), runs the `al` command as a user would (a subprocess with a plain environment) and
asserts: the documented exit code (docs/reliability.md), a message naming the file and, where
there is one, the row and the field, no traceback (only `-v` shows one), and a byte-identical
workspace afterwards (:func:`conftest.snapshot`, ``.git`` and ``.dvc`` included). A few inputs
that look odd but are valid (BOM, CRLF, names with spaces, commas and unicode) must be accepted.

The number of cases passed is printed at the end (``test_zz_catalogue_summary``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from reliability_helpers import CLASSES, HOLDOUT, N_PER_CLASS, run_al, snapshot, snapshot_diff, write_png

pytestmark = pytest.mark.slow  # ~45 subprocesses of a few seconds each

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_VALIDATION, EXIT_BAD_INPUT = 0, 1, 2, 3, 4
RESULTS: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    """``apply(ctx)`` builds the bad input and returns the `al` arguments; ``names``: text the
    message must contain (file, row, field); ``watch``: what must stay byte-identical."""

    id: str
    apply: Callable[["Ctx"], list]
    code: int = EXIT_BAD_INPUT
    names: tuple[str, ...] = ()
    check: Callable[["Ctx", str], None] | None = None  # extra assertions for accepted inputs
    xfail: str | None = None


@dataclass
class Ctx:
    """What a case works on: its workspace copy, a scratch folder and the module's source images."""

    ws: Path
    tmp: Path
    images: Path
    watch: list[Path] = field(default_factory=list)

    @property
    def new(self) -> Path:
        """The target of an `al init` case (must not exist afterwards, or stay as it was)."""
        return self.tmp / "new-ws"

    def source(self, *, flat: bool = False) -> Path:
        """A private copy of the labelled source folder (flat: every image in one folder)."""
        dest = self.tmp / "src"
        if flat:
            dest.mkdir()
            for p in sorted(self.images.rglob("*.png")):
                shutil.copy(p, dest / p.name)
        else:
            shutil.copytree(self.images, dest)
        self.watch.append(dest)
        return dest

    def watch_new(self) -> list:
        self.watch.append(self.new)
        return []

    def init(self, *extra, src: Path | None = None, manifest: Path | None = None) -> list:
        self.watch.append(self.new)
        where = ["--manifest", manifest] if manifest is not None else ["--images", src or self.source()]
        return ["init", self.new, *where, *extra]

    def manifest(self, text: str | bytes, name: str = "manifest.csv") -> Path:
        """``src/manifest.csv`` (paths relative to it) next to a copy of the source images."""
        src = self.source()
        path = src / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    def inbox_file(self, name: str, content: str | bytes) -> Path:
        """An annotation file outside the workspace (as a user hands it to `al import-labels`)."""
        path = self.tmp / "returned" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        self.watch.append(path.parent)
        return path

    def edit_params(self, edit: Callable[[dict], None]) -> None:
        import yaml

        path = self.ws / "params.yaml"
        raw = yaml.safe_load(path.read_text())
        edit(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))

    def manifest_rows(self) -> list[list[str]]:
        import csv

        with open(self.ws / "data/pool/manifest.csv", newline="") as f:
            return list(csv.reader(f))[1:]

    def ids(self, split: str = "") -> list[str]:
        return [r[0] for r in self.manifest_rows() if (r[2] if len(r) > 2 else "") == split]


# --- building blocks -------------------------------------------------------------------------------

def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def broken_idat_png(valid: bytes) -> bytes:
    """Valid signature and CRCs, but the IDAT stream inflates to too few bytes: PIL's verify()
    passes, a full decode fails."""
    chunks = [(t, zlib.compress(b"\x00" * 3) if t == b"IDAT" else d) for t, d in png_chunks(valid)]
    return png_from_chunks(chunks)


def bomb_png(side: int = 20000) -> bytes:
    """A 1-bit ``side``² greyscale PNG of zeros: ~50 KiB on disk, ``side``² pixels decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    comp, row, parts = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8), []
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", b"".join(parts)), (b"IEND", b"")])


def bad_image(kind: str, valid: bytes) -> bytes:
    return {"random": os.urandom(256), "truncated": valid[: len(valid) // 2], "empty": b"",
            "broken-idat": broken_idat_png(valid), "bomb": bomb_png()}[kind]


def init_with_bad_image(kind: str) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        src = ctx.source()
        (src / "cat" / "bad-image.png").write_bytes(bad_image(kind, (src / "cat" / "cat-00.png").read_bytes()))
        return ctx.init("--labels", "seed", src=src)
    return apply


def add_with_bad_image(kind: str) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        folder = ctx.tmp / "new-images"
        write_png(folder / "fresh-0.png", seed=7)
        (folder / "bad-image.png").write_bytes(bad_image(kind, (folder / "fresh-0.png").read_bytes()))
        ctx.watch.append(folder)
        return ["add-images", ctx.ws, folder]
    return apply


def manifest_text(ctx_src_rows: list[tuple[str, str, str]], header: str = "id,path,label") -> str:
    return header + "\n" + "".join(",".join(r) + "\n" for r in ctx_src_rows)


def _rows(n: int = 6) -> list[tuple[str, str, str]]:
    return [(f"{c}-{i:02d}", f"{c}/{c}-{i:02d}.png", c) for c in CLASSES for i in range(n)]


def init_with_manifest(rows_or_text, *extra, encoding_bytes: bytes | None = None) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        text = rows_or_text if isinstance(rows_or_text, (str, bytes)) else manifest_text(rows_or_text)
        return ctx.init("--labels", "seed", *extra, manifest=ctx.manifest(text))
    return apply


def import_labels(name: str, content: Callable[[Ctx], str | bytes] | str | bytes) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        data = content(ctx) if callable(content) else content
        return ["import-labels", ctx.ws, ctx.inbox_file(name, data)]
    return apply


def round_with_params(edit: Callable[[dict], None]) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        ctx.edit_params(edit)
        return ["round", ctx.ws]
    return apply


def round_with_params_text(text: str) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        (ctx.ws / "params.yaml").write_text(text)
        return ["round", ctx.ws]
    return apply


def set_key(dotted: str, value) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


def unlabelled(ctx: Ctx, n: int = 1) -> list[str]:
    """Pool ids without a label in the base workspace (the manifest's ``pool-*`` images)."""
    return [i for i in ctx.ids() if i.startswith("pool-")][:n]


def score_with_checkpoint(write: Callable[[Ctx, Path], None]) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        path = ctx.ws / "models" / "model.pt"
        path.parent.mkdir(exist_ok=True)
        write(ctx, path)
        return ["stage", "score", ctx.ws]
    return apply


def _workspace_model(ctx: Ctx):
    from al_lib.models import build_model

    return build_model("gal_cnn", (1, 8, 8), len(CLASSES))


def nan_weights(ctx: Ctx, path: Path) -> None:
    state = _workspace_model(ctx).state_dict()
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = torch.full_like(state[last], float("nan"))
    torch.save(state, path)


class _Payload:  # unpickling it would create a file: weights_only must refuse it
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def labels_csv(rows: list[tuple[str, str]], header: str = "id,label") -> str:
    return header + "\n" + "".join(f"{i},{label}\n" for i, label in rows)


def ls_task(sample_id: str, label: str | None, cancelled: bool = False) -> dict:
    result = [] if label is None else [{"type": "choices", "from_name": "label", "to_name": "image",
                                        "value": {"choices": [label]}}]
    return {"id": 1, "data": {"sample_id": sample_id},
            "annotations": [{"result": result, "was_cancelled": cancelled, "completed_by": 1}]}


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- accepted inputs ---------------------------------------------------------------------------------

def accepted_manifest_ids(expected: list[str]):
    def check(ctx: Ctx, out: str) -> None:
        import csv

        with open(ctx.new / "data/pool/manifest.csv", newline="") as f:
            ids = [r["id"] for r in csv.DictReader(f)]
        assert ids == expected
    return check


def queued(n: int):
    def check(ctx: Ctx, out: str) -> None:
        assert f"{n} new labels" in out
    return check


def bom_crlf_manifest(ctx_rows=None) -> bytes:
    rows = _rows(3)
    return ("\ufeffid,path,label\r\n" + "".join(",".join(r) + "\r\n" for r in rows)).encode("utf-8")


def odd_names_init(ctx: Ctx) -> list:
    src = ctx.source()
    for new, old in (("my cat, 1.png", "cat/cat-00.png"), ("chat-été ünï.png", "cat/cat-01.png"),
                     ('dog "quoted".png', "dog/dog-00.png"), ("dog 2.png", "dog/dog-01.png")):
        os.replace(src / old, src / old.split("/")[0] / new)
    return ctx.init("--labels", "seed", src=src)


def odd_names_check(ctx: Ctx, out: str) -> None:
    import csv

    with open(ctx.new / "data/pool/manifest.csv", newline="", encoding="utf-8") as f:
        ids = {r["id"] for r in csv.DictReader(f)}
    # ids are <class folder>/<file name>
    assert {"cat/my cat, 1.png", "cat/chat-été ünï.png", 'dog/dog "quoted".png', "dog/dog 2.png"} <= ids


def symlink_in_source(target: Callable[[Ctx], Path]) -> Callable[[Ctx], list]:
    def apply(ctx: Ctx) -> list:
        src = ctx.source()
        os.symlink(target(ctx), src / "cat" / "linked.png")
        return ctx.init("--labels", "seed", src=src)
    return apply


def outside_png(ctx: Ctx) -> Path:
    return write_png(ctx.tmp / "elsewhere" / "private.png", seed=99)


def manifest_through_symlink(ctx: Ctx) -> list:
    src = ctx.source()
    os.symlink("/etc/passwd", src / "cat" / "passwd.png")
    rows = _rows(3) + [("secret", "cat/passwd.png", "cat")]
    (src / "manifest.csv").write_text(manifest_text(rows))
    return ctx.init("--labels", "seed", manifest=src / "manifest.csv")


def empty_pool(ctx: Ctx) -> list:
    """Labels for every unlabelled pool image wait in the inbox: nothing is left to query."""
    rows = [(i, "cat") for i in unlabelled(ctx, 10**6)]
    inbox = ctx.ws / "data" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "all.csv").write_text(labels_csv(rows))
    return ["round", ctx.ws]


def add_images_symlink(ctx: Ctx) -> list:
    folder = ctx.tmp / "new-images"
    write_png(folder / "fresh-0.png", seed=7)
    os.symlink(outside_png(ctx), folder / "linked.png")
    ctx.watch.append(folder)
    return ["add-images", ctx.ws, folder]


def one_class(ctx: Ctx) -> list:
    src = ctx.source()
    shutil.rmtree(src / "dog")
    return ctx.init("--labels", "seed", src=src)


def pickled_code(ctx: Ctx, path: Path) -> None:
    torch.save({"weights": _Payload(str(ctx.tmp / "pwned"))}, path)


def no_payload_ran(ctx: Ctx, out: str) -> None:
    assert not (ctx.tmp / "pwned").exists()


CASES = [
    # al init: images
    Case("init-image-random-bytes", init_with_bad_image("random"), names=("bad-image.png",)),
    Case("init-image-truncated", init_with_bad_image("truncated"), names=("bad-image.png",)),
    Case("init-image-zero-bytes", init_with_bad_image("empty"), names=("bad-image.png",)),
    Case("init-image-broken-idat", init_with_bad_image("broken-idat"), names=("bad-image.png",)),
    Case("init-image-decompression-bomb", init_with_bad_image("bomb"), names=("bad-image.png", "pixels")),
    Case("init-symlink-leaving-the-folder", symlink_in_source(outside_png), names=("linked.png", "symlink")),
    Case("init-one-class", one_class, names=("class",)),
    Case("init-holdout-too-large", lambda ctx: ctx.init("--labels", "seed", "--holdout", 500),
         names=("holdout", "500")),
    Case("init-query-size-zero", lambda ctx: ctx.init("--labels", "seed", "--query-size", 0),
         names=("query_size",)),
    Case("init-query-size-above-pool", lambda ctx: ["init", ctx.new, "--images", ctx.source(), "--labels", "oracle",
                                                     "--holdout", 4, "--query-size", 1000, *ctx.watch_new()],
         names=("query_size", "1000")),
    # al init: manifests
    Case("manifest-dotdot-path", init_with_manifest(_rows(3) + [("x", "../outside.png", "cat")]),
         names=("manifest.csv", "row 8", "path")),
    Case("manifest-absolute-path", init_with_manifest(_rows(3) + [("x", "/etc/passwd", "cat")]),
         names=("manifest.csv", "row 8", "path")),
    Case("manifest-duplicate-id", init_with_manifest(_rows(3) + [("cat-00", "cat/cat-05.png", "cat")]),
         names=("manifest.csv", "row 8", "id")),
    Case("manifest-ids-collide-on-one-file",
         init_with_manifest(_rows(3) + [("./cat-00", "cat/cat-05.png", "cat")]),
         names=("manifest.csv", "row 8", "id", "cat-00")),
    Case("manifest-symlink-to-etc-passwd", manifest_through_symlink, names=("manifest.csv", "row 8", "symlink")),
    Case("manifest-header-only", init_with_manifest("id,path,label\n"), names=("manifest.csv", "no data rows")),
    Case("manifest-wrong-delimiter", init_with_manifest(manifest_text(_rows(3)).replace(",", ";")),
         names=("manifest.csv", "row 1", "path")),
    Case("manifest-not-utf8", init_with_manifest(manifest_text(_rows(3)).replace("cat-00,", "caté-00,")
                                                 .encode("latin-1")),
         names=("manifest.csv", "UTF-8")),
    Case("manifest-bom-crlf-accepted", init_with_manifest(bom_crlf_manifest()), code=EXIT_OK,
         check=accepted_manifest_ids([r[0] for r in _rows(3)])),
    Case("names-spaces-commas-unicode-accepted", odd_names_init, code=EXIT_OK, check=odd_names_check),
    # al import-labels
    Case("labels-unknown-id", import_labels("batch.csv", labels_csv([("no-such-id", "cat")])),
         names=("batch.csv", "row 2", "id", "no-such-id")),
    Case("labels-unknown-class", import_labels("batch.csv", lambda ctx: labels_csv([(unlabelled(ctx)[0], "bird")])),
         names=("batch.csv", "row 2", "label", "bird")),
    Case("labels-conflict-within-file", import_labels(
        "batch.csv", lambda ctx: labels_csv([(unlabelled(ctx)[0], "cat"), (unlabelled(ctx)[0], "dog")])),
         names=("batch.csv", "row 3", "label")),
    Case("labels-conflict-with-held-out-label", import_labels(
        "batch.csv", lambda ctx: labels_csv([(ctx.ids("test")[0], "dog"), (ctx.ids("test")[1], "cat")])),
         names=("batch.csv", "row 2", "label")),
    Case("labels-header-only", import_labels("batch.csv", "id,label\n"), names=("batch.csv",)),
    Case("labels-not-utf8", import_labels("batch.csv", "id,label\nchaté,cat\n".encode("latin-1")),
         names=("batch.csv", "UTF-8")),
    Case("labels-bom-crlf-accepted", import_labels(
        "batch.csv", lambda ctx: ("\ufeffid,label\r\n" + "".join(f"{i},dog\r\n" for i in unlabelled(ctx, 2)))
        .encode("utf-8")), code=EXIT_OK, check=queued(2)),
    Case("labelstudio-deeply-nested-json", import_labels("export.json", nested_json(100_000)),
         names=("export.json",)),
    Case("labelstudio-all-cancelled", import_labels(
        "export.json", lambda ctx: json.dumps([ls_task(i, "cat", cancelled=True) for i in unlabelled(ctx, 2)])),
         names=("export.json",)),
    Case("labelstudio-missing-choices", import_labels(
        "export.json", lambda ctx: json.dumps([ls_task(unlabelled(ctx)[0], None)])),
         names=("export.json", "task 1", "result")),
    # al round: params.yaml and round.yaml (refused before anything changes)
    Case("params-max-epochs-not-int", round_with_params(set_key("training.max_epochs", "ten")),
         names=("params.yaml", "training.max_epochs", "ten")),
    Case("params-inference-batch-size-zero", round_with_params(set_key("inference.batch_size", 0)),
         names=("params.yaml", "inference.batch_size")),
    Case("params-unknown-model", round_with_params(set_key("model.name", "resnet9000")),
         names=("params.yaml", "model.name", "resnet9000")),
    Case("params-unknown-training-key", round_with_params(set_key("training.lrr", 0.1)),
         names=("params.yaml", "training.lrr")),
    Case("params-mc-iterations-bool", round_with_params(set_key("mc_iterations", True)),
         names=("params.yaml", "mc_iterations")),
    Case("params-query-size-zero", round_with_params(set_key("query_size", 0)), names=("params.yaml", "query_size")),
    Case("params-not-yaml", round_with_params_text("classes: [cat, dog\nquery_size: 3\n"),
         names=("params.yaml", "YAML")),
    Case("round-empty-pool", empty_pool, names=("pool",)),
    # checkpoints (`al stage score`, as `dvc repro` runs it)
    Case("checkpoint-not-a-state-dict", score_with_checkpoint(lambda ctx, p: torch.save([1, 2, 3], p)),
         names=("model.pt", "state dict")),
    Case("checkpoint-pickled-code-refused", score_with_checkpoint(pickled_code), names=("model.pt",),
         check=no_payload_ran),
    Case("mc-probabilities-nan", score_with_checkpoint(nan_weights), names=("NaN", "samples")),
    # al add-images
    Case("add-images-broken-idat", add_with_bad_image("broken-idat"), names=("bad-image.png", "decode")),
    Case("add-images-symlink-leaving-the-folder", add_images_symlink, names=("linked.png", "symlink")),
]


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory, source_images):
    """`al init --manifest` of 24 images: 12 labelled (4 of them held out as test), 12 unlabelled
    pool images (``pool-*``)."""
    from reliability_helpers import run_al as run

    parent = tmp_path_factory.mktemp("base")
    src = parent / "src"
    shutil.copytree(source_images, src)
    rows = [(f"{c}-{i:02d}", f"{c}/{c}-{i:02d}.png", c if i < 6 else "") for c in CLASSES for i in range(N_PER_CLASS)]
    rows = [(f"pool-{i}" if not label else i, p, label) for i, p, label in rows]
    (src / "manifest.csv").write_text(manifest_text(rows))
    proc = run(["init", parent / "ws", "--manifest", src / "manifest.csv", "--labels", "seed",
                "--holdout", HOLDOUT, "--classes", ",".join(CLASSES), "--query-size", 3, "--mc-iterations", 2,
                "--pool-subsample", 10], cwd=parent, home=parent / "home")
    assert proc.returncode == 0, proc.stderr
    return parent / "ws"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                                if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, workspace, tmp_path, source_images, request):
    ctx = Ctx(ws=workspace, tmp=tmp_path / "case", images=source_images)
    ctx.tmp.mkdir()
    args = case.apply(ctx)
    watched = [ctx.ws, *ctx.watch]
    before = {str(p): snapshot(p) for p in watched}
    proc = run_al(args, cwd=ctx.tmp, home=tmp_path / "home")
    out = proc.stdout + proc.stderr
    assert proc.returncode == case.code, f"exit {proc.returncode}, expected {case.code}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    for text in case.names:
        assert text in out, f"{text!r} not in the message:\n{out[-3000:]}"
    if case.check is not None:
        case.check(ctx, out)
    if case.code != EXIT_OK:
        for p in watched:
            diff = snapshot_diff(before[str(p)], snapshot(p))
            assert not diff, f"{p} changed: {diff[:10]}"
    RESULTS[case.id] = "passed"


def test_verbose_shows_the_traceback(workspace, tmp_path):
    """`-v` adds the traceback of a bad-input error (for a bug report); without it there is none."""
    (workspace / "params.yaml").write_text("- cat\n")
    proc = run_al(["-v", "round", workspace], cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "Traceback" in proc.stderr and "params.yaml" in proc.stderr


def test_a_step_failing_inside_the_round_flow_shows_no_traceback(workspace, tmp_path):
    """A user error raised by a step *inside* the Prefect flow run (here: validation finds a pool
    image truncated after `al init`) gives exit 3 and the message naming row and path — without the
    walls of Prefect engine frames its task and flow loggers would print; no round is tagged."""
    import subprocess

    manifest = (workspace / "data/pool/manifest.csv").read_text().splitlines()
    victim = workspace / manifest[-1].split(",")[1]
    victim.write_bytes(victim.read_bytes()[:60])
    labels_before = (workspace / "data/labels.csv").read_bytes()
    proc = run_al(["round", workspace], cwd=tmp_path, home=tmp_path / "home")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert f"row {len(manifest)}" in out and victim.name in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert (workspace / "data/labels.csv").read_bytes() == labels_before
    tags = subprocess.run(["git", "tag", "--list", "round-*"], cwd=workspace, capture_output=True, text=True)
    assert tags.stdout.strip() == "", tags.stdout


def test_zz_catalogue_summary(capsys):
    """Print how many catalogue cases passed (runs last in this module)."""
    with capsys.disabled():
        print(f"\nbad-input catalogue: {len(RESULTS)} of {len(CASES)} cases passed")
    assert len(CASES) >= 30
