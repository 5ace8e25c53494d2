"""Shared plumbing of the benchmarks: machine info, threads, timing, peak memory, result rows."""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil
import torch

MIB = 2**20


# --- machine and threads -------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: torch.device, threads: int) -> dict:
    import baal  # noqa: F401  (version below)
    from importlib.metadata import version

    info = {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "threads": threads,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "baal": version("baal"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def set_threads(threads: int):
    """Same thread count for both sides: torch intra-op threads and every BLAS/OpenMP pool.

    Returns the threadpoolctl limiter (keep it alive for the run)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    return threadpool_limits(limits=threads)


# --- timing --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    gc.collect()
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median_time(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: Callable[[], object] | None = None,
) -> tuple[float, list[float], object]:
    """Median wall time of ``repeats`` calls (after one ``warmup`` call, when given)."""
    if warmup is not None:
        warmup()
    times, out = [], None
    for _ in range(max(1, repeats)):
        t, out = time_call(fn, device)
        times.append(t)
    return statistics.median(times), times, out


# --- peak memory ---------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    """Fallback where VmHWM cannot be reset: poll RSS every 2 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3


def fix_malloc() -> bool:
    """glibc: serve every allocation >= 128 KiB by mmap (fixed threshold, not the adaptive one), so
    a freed large buffer leaves the process at once instead of staying resident and hiding the
    next measurement's allocations from the RSS peak."""
    if _LIBC is None:
        return False
    try:
        return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    except AttributeError:
        return False


def _trim() -> None:
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict:
    """Run ``fn`` once and report its peak memory above what was allocated before, in MiB.

    - ``rss_mib``: peak resident set size of the process minus the RSS before the call (Linux
      VmHWM after resetting it through ``/proc/self/clear_refs``; else RSS polled every 2 ms).
      Covers every CPU allocation: torch tensors, numpy arrays, Python objects, allocator slack.
      Free heap memory is returned to the OS first (``malloc_trim``; see :func:`fix_malloc`).
    - ``tracemalloc_mib``: peak of allocations traced by ``tracemalloc`` (numpy arrays and Python
      objects; torch CPU tensors are not traced).
    - ``cuda_mib`` (GPU only): ``torch.cuda.max_memory_allocated`` minus the allocation before.
    """
    _trim()
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    rss_before = psutil.Process().memory_info().rss
    use_hwm = _reset_hwm()
    sampler = None
    if not use_hwm:
        sampler = _RssSampler()
        sampler.start()
    tracemalloc.start()
    try:
        fn()
        sync(device)
    finally:
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
    peak = _status_kib("VmHWM") * 1024 if use_hwm else sampler.peak
    out["rss_mib"] = round(max(0, peak - rss_before) / MIB, 1)
    out["tracemalloc_mib"] = round(traced_peak / MIB, 1)
    out["rss_method"] = "VmHWM" if use_hwm else "poll-2ms"
    if device.type == "cuda":
        out["cuda_mib"] = round((torch.cuda.max_memory_allocated(device) - cuda_before) / MIB, 1)
    return out


def memory_of(mem: dict, device: torch.device) -> float:
    """The one peak-memory number a table row shows: CUDA peak on GPU, RSS delta on CPU."""
    return mem["cuda_mib"] if device.type == "cuda" else mem["rss_mib"]


# --- result rows ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table.

    ``kind`` says how ``ratio`` is read: "speedup" (baal / ours, for times), "throughput"
    (ours / baal), "memory" (baal / ours), "difference" (ours - baal), or "at_most" (no BaaL
    side: the target is an upper bound on ``ours`` itself). ``target`` is the issue's target on
    ``ratio`` (None: report only).
    """

    group: str
    name: str
    unit: str
    ours: float | None
    baal: float | None
    kind: str = "speedup"
    target: float | None = None
    baal_label: str = "BaaL"
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.kind == "at_most":
            return None
        if self.ours is None or self.baal is None:
            return None
        if self.kind == "difference":
            return self.ours - self.baal
        if self.kind == "throughput":
            return self.ours / self.baal if self.baal else None
        # speedup (times) and memory: how many times less ours needs
        return self.baal / self.ours if self.ours else None

    @property
    def met(self) -> bool | None:
        if self.kind == "at_most" and self.target is not None and self.ours is not None:
            return self.ours <= self.target
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        s = f"{x:,.0f}"
    elif abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    elif abs(x) >= 0.01 or x == 0:
        s = f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    else:
        s = f"{x:.2e}"
    return f"{s} {unit}".rstrip()


def _fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    if row.kind == "difference":
        return f"{r:+.4f}"
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def _fmt_target(row: Row) -> str:
    if row.target is None:
        return "-"
    if row.kind == "difference":
        return f">= {row.target:+g}"
    if row.kind == "at_most":
        return f"ours <= {row.target:g}"
    return f">= {row.target:.3g}x"


def format_table(rows: list[Row]) -> str:
    header = ["group", "benchmark", "ours", "baal (which)", "ratio", "target", "met"]
    lines = []
    for row in rows:
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        baal = _fmt(row.baal, row.unit) + (f" ({row.baal_label})" if row.baal is not None else "")
        ours = _fmt(row.ours, row.unit)
        lines.append([row.group, row.name, ours, baal, _fmt_ratio(row), _fmt_target(row), met])
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)
