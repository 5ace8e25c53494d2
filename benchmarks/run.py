"""Run the al_lib vs BaaL 2.1.0 benchmarks and print one table of ratios measured in this run.

    .venv/bin/python -m benchmarks.run                 # every group, full sizes (tens of minutes)
    .venv/bin/python -m benchmarks.run --quick         # smoke run, small sizes (a few minutes)
    .venv/bin/python -m benchmarks.run --only batch_bald --only mc_scoring
    .venv/bin/python benchmarks/run.py --device cuda

Writes ``benchmarks/results/latest.json`` (or ``--output``): machine, settings, every row and the
raw measurements of each group. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import _util  # noqa: E402

GROUPS = ["mc_scoring", "memory_scaling", "batch_bald", "heuristics_1m", "round_overhead", "embedding_strategies"]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass
class Config:
    quick: bool
    device: torch.device
    repeats: int
    baal_repeats: int
    verbose: bool

    cpu = torch.device("cpu")

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"baal\..*")
    warnings.filterwarnings("ignore", message=".*MCCachingModule.*")
    logging.getLogger("al_lib").setLevel(logging.WARNING)
    try:  # BaaL logs "Start Predict" through structlog at INFO on every call
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    except ImportError:
        pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    parser.add_argument("--only", action="append", choices=GROUPS, metavar="NAME",
                        help=f"run only this group (repeatable): {', '.join(GROUPS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads for both sides (default: the cores available)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats (default 3; --quick 1)")
    parser.add_argument("--baal-repeats", type=int, default=1,
                        help="repeats of BaaL's BatchBALD, minutes each (default 1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON path")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet_libraries()
    from al_lib.device import resolve_device

    device = resolve_device(None if args.device == "auto" else args.device)
    threads = args.threads or _util.available_cores()
    limiter = _util.set_threads(threads)  # noqa: F841  (kept alive for the whole run)
    fixed_malloc = _util.fix_malloc()
    cfg = Config(
        quick=args.quick,
        device=device,
        repeats=args.repeats or (1 if args.quick else 3),
        baal_repeats=args.baal_repeats,
        verbose=not args.quiet,
    )
    machine = _util.machine_info(device, threads)
    groups = args.only or GROUPS
    header = (
        f"al_lib vs BaaL {machine['baal']} | {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB | torch {machine['torch']} | device {device}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + f"\nthreads: torch={threads}, BLAS/OpenMP={threads} (threadpoolctl), same for both sides"
        + f" | load average at start {machine['load_average_1m']}"
        + f" | {'QUICK smoke run' if cfg.quick else 'full run'}, median of {cfg.repeats} repeat(s)"
    )
    print(header, flush=True)
    results = {"machine": machine, "settings": {**vars(args), "output": str(args.output),
                                                "repeats": cfg.repeats, "threads": threads,
                                                "glibc_mmap_threshold_fixed": fixed_malloc},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "groups": {}}
    rows: list[_util.Row] = []
    for name in groups:
        module = __import__(f"benchmarks.{name}", fromlist=["run"])
        cfg.log(f"[{name}]")
        start = time.perf_counter()
        try:
            group_rows, details = module.run(cfg)
        except Exception as err:  # one broken group must not lose the others' results
            logging.exception("benchmark group %s failed", name)
            results["groups"][name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        rows += group_rows
        results["groups"][name] = {
            "seconds": time.perf_counter() - start,
            "rows": [row.as_dict() for row in group_rows],
            "details": details,
        }
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print()
    print(_util.format_table(rows))
    notes = [f"  {row.group} / {row.name}: {row.note}" for row in rows if row.note]
    if cfg.quick:
        notes.insert(0, "  --quick: smaller sizes than the issue's; targets are for the full sizes")
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    failed = [name for name, g in results["groups"].items() if "error" in g]
    if failed:
        print(f"\nFAILED groups: {', '.join(failed)} (see the JSON)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults: {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
