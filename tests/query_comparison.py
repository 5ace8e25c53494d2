"""Whether two runs of a round queried the same: shared by the determinism and fault-injection tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tasks.workspace import Workspace


def same_up_to_float_noise(ours, theirs, where: str = "") -> list[str]:
    """Where the parsed JSON-like values ``ours`` and ``theirs`` differ: everything equal, except
    that floats need only agree to 1e-5 (1e-3 relative)."""
    if isinstance(ours, float) and isinstance(theirs, float):
        return [] if math.isclose(ours, theirs, rel_tol=1e-3, abs_tol=1e-5) else [f"{where}: {ours} != {theirs}"]
    if isinstance(ours, dict) and isinstance(theirs, dict) and list(ours) == list(theirs):
        return [d for key in ours for d in same_up_to_float_noise(ours[key], theirs[key], f"{where}.{key}")]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in same_up_to_float_noise(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"]


def query_differences(ws: Path, reference: Path, round: int) -> list[str]:
    """How round ``round``'s query differs from ``reference``'s: the same images in the same order
    with the same predicted classes (CSV and Label Studio tasks) and byte-equal thumbnails, scores
    equal up to float noise. Two processes' CPU training differs in the weights' last bits (up to
    2e-6, run to run: not traced), so a BALD score (a difference of entropies) may differ by ~6e-8,
    which the query files print in full."""
    a, b = Workspace(ws), Workspace(reference)
    (csv_a, tasks_a), (csv_b, tasks_b) = a.query_paths(round), b.query_paths(round)
    if not (csv_a.is_file() and tasks_a.is_file()):
        return [f"{csv_a.relative_to(a.root)}: no query files"]
    frames = [pd.read_csv(path, dtype={"id": str}).to_dict("list") for path in (csv_a, csv_b)]
    problems = same_up_to_float_noise(*frames, str(csv_a.relative_to(a.root)))
    problems += same_up_to_float_noise(json.loads(tasks_a.read_text()), json.loads(tasks_b.read_text()),
                                       str(tasks_a.relative_to(a.root)))
    if a.query_thumbnails(round).read_bytes() != b.query_thumbnails(round).read_bytes():
        problems.append(f"{a.query_thumbnails(round).relative_to(a.root)}: thumbnails differ")
    return problems
