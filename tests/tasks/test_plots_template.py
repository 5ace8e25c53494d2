"""`dvc plots show` offline: the bundled page, its installation in workspaces, and a real render.

The render test runs real DVC and headless Chromium (Debian's package; scripts/test.sh installs it)
with every host name unresolvable, so nothing can come from a CDN: the chart must draw from the
libraries inlined in the page.
"""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.create import create_workspace
from tasks.demo import write_mnist_folder
from tasks.plots_template import (
    TEMPLATE, WORKSPACE_TEMPLATE, configured_template, install_plots_template,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROUNDS = "round,n_labelled,epochs,test_accuracy\n0,10,3,0.41\n1,15,3,0.55\n2,20,3,0.62\n3,25,3,0.71\n"


def _run(args, cwd, timeout=120) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _git_clean(repo: Path, *paths: str) -> bool:
    return _run(["git", "status", "--porcelain", "--", *paths], repo) == ""


def test_bundled_page_inlines_vega_and_keeps_dvcs_placeholders():
    page = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    # No scripts placeholder: DVC would put its CDN <script src=...> tags there.
    assert "{scripts}" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page, flags=re.IGNORECASE)
    assert page.count("<script>") == page.count("</script>") == 3
    versions = dict(re.findall(r"(vega(?:-lite|-embed)?) (\d+)\.\d+\.\d+", page.split("-->")[0]))
    assert versions == {"vega": "5", "vega-lite": "5", "vega-embed": "6"}
    assert 200_000 < TEMPLATE.stat().st_size < 1_500_000  # the three minified builds, nothing more


def test_install_copies_the_page_and_sets_dvcs_option(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    _run(["git", "init", "-q"], ws)
    _run([DVC, "init", "-q"], ws)

    assert configured_template(ws) is None
    assert install_plots_template(ws) == [WORKSPACE_TEMPLATE, ".dvc/config"]
    assert (ws / WORKSPACE_TEMPLATE).read_bytes() == TEMPLATE.read_bytes()
    # What DVC itself reads back, relative to .dvc/ as its docs say.
    assert _run([DVC, "config", "plots.html_template"], ws).strip() == "plots/index.html"
    assert configured_template(ws) == (ws / WORKSPACE_TEMPLATE).resolve()

    # Idempotent: a second install rewrites neither file.
    stamps = [(ws / p).stat().st_mtime_ns for p in (WORKSPACE_TEMPLATE, ".dvc/config")]
    install_plots_template(ws)
    assert [(ws / p).stat().st_mtime_ns for p in (WORKSPACE_TEMPLATE, ".dvc/config")] == stamps

    # A stale copy (an older bundle) is replaced.
    (ws / WORKSPACE_TEMPLATE).write_text("<html>{plot_divs}</html>")
    install_plots_template(ws)
    assert (ws / WORKSPACE_TEMPLATE).read_bytes() == TEMPLATE.read_bytes()


def test_install_refuses_a_folder_without_dvc_and_a_page_without_placeholder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc init"):
        install_plots_template(tmp_path)
    (tmp_path / ".dvc").mkdir()
    page = tmp_path / "page.html"
    page.write_text("<html><body>no plots here</body></html>")
    with pytest.raises(ValueError, match="plot_divs"):
        install_plots_template(tmp_path, template=page)
    assert not (tmp_path / WORKSPACE_TEMPLATE).exists()


def test_repository_root_demo_workspace_uses_the_bundled_page():
    assert configured_template(REPO_ROOT) == TEMPLATE


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A real workspace (git + DVC) of 30 MNIST digits, with a learning curve of four rounds."""
    base = tmp_path_factory.mktemp("plots")
    images = write_mnist_folder(base / "images", n=30, classes=(0, 1, 2))
    ws = create_workspace(base / "ws", images=images, labels="oracle", holdout=6)
    (ws.root / "metrics").mkdir(exist_ok=True)
    (ws.root / "metrics" / "rounds.csv").write_text(ROUNDS)
    return ws.root


def test_created_workspace_commits_its_offline_page(workspace):
    assert configured_template(workspace) == (workspace / WORKSPACE_TEMPLATE).resolve()
    assert (workspace / WORKSPACE_TEMPLATE).read_bytes() == TEMPLATE.read_bytes()
    tracked = _run(["git", "ls-files", WORKSPACE_TEMPLATE, ".dvc/config"], workspace).split()
    assert sorted(tracked) == [".dvc/config", WORKSPACE_TEMPLATE]
    assert _git_clean(workspace, ".dvc")


def _chromium(url: str, profile: Path, *extra: str, timeout: int = 120) -> str:
    """Headless Chromium on ``url`` with networking off; returns stdout. Killed with its children."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            # Every host name fails to resolve: a page that needs a CDN cannot reach one.
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            "--window-size=900,600", "--virtual-time-budget=10000", *extra, url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out


def _render(workspace: Path, out: Path) -> tuple[str, np.ndarray]:
    """`dvc plots show` into ``out``; the DOM after scripts ran and a screenshot (RGB array)."""
    _run([DVC, "plots", "show", "-o", out], workspace)
    page = out / "index.html"
    dom = _chromium(page.as_uri(), out / "profile-dom", "--dump-dom")
    shot = out / "screenshot.png"
    _chromium(page.as_uri(), out / "profile-shot", f"--screenshot={shot}")
    with Image.open(shot) as image:
        return dom, np.asarray(image.convert("RGB")).astype(int)


def _line(pixels: np.ndarray) -> np.ndarray:
    """Mask of the data line: pixels near the most frequent saturated colour (the line's stroke;
    axes, grid and text are grey or black, the legend symbol is a lighter fill)."""
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    if not saturated.any():
        return saturated
    colours, counts = np.unique(pixels[saturated], axis=0, return_counts=True)
    return np.abs(pixels - colours[counts.argmax()]).sum(axis=2) < 30


def _row_at(line: np.ndarray, col: int) -> float:
    """Mean screen row of the line around column ``col``."""
    return float(np.nonzero(line[:, col - 1:col + 2])[0].mean())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed and could not be: scripts/test.sh "
                                             "installs Debian's chromium package with apt-get")
def test_dvc_plots_show_draws_the_learning_curve_offline(workspace, tmp_path):
    dom, pixels = _render(workspace, tmp_path / "offline")
    assert "cdn.jsdelivr" not in (tmp_path / "offline" / "index.html").read_text()
    # vega-embed ran: it marked the plot's div and drew into a canvas of real size.
    assert re.search(r'<div id="metrics_rounds_csv" class="vega-embed', dom), dom[-2000:]
    canvas = re.search(r'<canvas width="(\d+)" height="(\d+)" class="marks"', dom)
    assert canvas and int(canvas[1]) > 200 and int(canvas[2]) > 200
    # The learning curve itself, point by point: with the line's ends as reference, every inner
    # round's (n_labelled, test_accuracy) lies on it (screen rows grow downwards).
    line = _line(pixels)
    assert line.sum() > 200, "no data line in the screenshot"
    cols = np.flatnonzero(line.any(axis=0))
    (x0, *_, x1), (y0, *_, y1) = cols[[0, -1]], [_row_at(line, cols[0] + 1), _row_at(line, cols[-1] - 1)]
    assert x1 - x0 > 200 and y0 - y1 > 100  # wide, and rising: accuracy 0.41 → 0.71
    n, accuracy = np.loadtxt(io.StringIO(ROUNDS), delimiter=",", skiprows=1, usecols=(1, 3), unpack=True)
    for n_i, acc_i in zip(n[1:-1], accuracy[1:-1]):
        col = round(x0 + (n_i - n[0]) / (n[-1] - n[0]) * (x1 - x0))
        expected_row = y0 + (acc_i - accuracy[0]) / (accuracy[-1] - accuracy[0]) * (y1 - y0)
        assert abs(_row_at(line, col) - expected_row) < 6, (n_i, acc_i, _row_at(line, col), expected_row)

    # The control: DVC's own page (its CDN scripts) stays blank here, so the check above can fail.
    _run([DVC, "config", "--unset", "plots.html_template"], workspace)
    try:
        dom, pixels = _render(workspace, tmp_path / "cdn")
    finally:
        _run([DVC, "config", "plots.html_template", "plots/index.html"], workspace)
    assert "cdn.jsdelivr" in (tmp_path / "cdn" / "index.html").read_text()
    assert "<canvas" not in dom and not _line(pixels).any()
