"""`al`: create workspaces and run, resume, simulate and inspect active-learning rounds.

Exit codes scripts can rely on:

    0  success (including "nothing to do": no new annotations)
    1  unexpected error
    2  bad command line
    3  validation failed (Great Expectations): see the validation-failures artifact / Data Docs
    4  bad input: annotation file, manifest, params.yaml or image folder (message names file, row, field)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_VALIDATION, EXIT_BAD_INPUT = 0, 1, 2, 3, 4


def _add_params_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heuristic", help="acquisition strategy (default: bald)")
    p.add_argument("--query-size", type=int, help="images to label per round (default: 20)")
    p.add_argument("--mc-iterations", type=int, help="MC dropout samples T (default: 20)")
    p.add_argument("--pool-subsample", type=int, help="pool images scored per round (default: 2000)")
    p.add_argument("--initial-labels", type=int, help="random labels before round 0 in simulation (default: 20)")
    p.add_argument("--initial-strategy", choices=("random", "typiclust", "probcover"),
                   help="how simulation's initial labels are chosen (default: random; typiclust/probcover: "
                        "cold start on the untrained model's features)")


def _add_dask_options(p: argparse.ArgumentParser, workers_do: str = "score the pool in this many shards") -> None:
    p.add_argument("--workers", type=int, default=1,
                   help=f"{workers_do} on Dask (a local cluster unless --dask-address)")
    p.add_argument("--dask-address", help="scheduler address of an existing Dask cluster, e.g. tcp://10.0.0.5:8786")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="al", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a workspace from images or a manifest")
    p.add_argument("path", type=Path, help="new (empty) folder for the workspace")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images: class subfolders (labelled) or flat")
    src.add_argument("--manifest", type=Path, help="CSV id,path[,label][,split], paths relative to the CSV")
    p.add_argument("--labels", choices=("seed", "oracle", "none"), default="seed",
                   help="known labels become the seed labelled set, a simulation oracle's truth, or nothing")
    p.add_argument("--classes", help="comma-separated class names (default: from folders / label column)")
    p.add_argument("--holdout", type=int, default=0, help="labelled images kept aside as a test split")
    p.add_argument("--seed", type=int, default=0)
    _add_params_options(p)

    p = sub.add_parser("round", help="run (or resume) the next round on a workspace")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))
    p.add_argument("--device", help="cuda or cpu (default: CUDA when present)")
    p.add_argument("--allow-empty", action="store_true", help="start a new round even with no new annotations")
    p.add_argument("--rerun", action="store_true",
                   help="re-run the finished round's out-of-date steps (after a params or code change), re-tag it")
    _add_dask_options(p)

    p = sub.add_parser("simulate", help="run N unattended rounds with an oracle answering the queries")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device")
    p.add_argument("--baseline", metavar="STRATEGY",
                   help="then replay the study with this reference acquisition (random) from the same start "
                        "and plot both learning curves (needs held-out test labels)")
    _add_dask_options(p)

    p = sub.add_parser("status", help="rounds, labels per class, metrics per round, pending annotations")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))

    p = sub.add_parser("import-labels", help="check annotation files and put them in the inbox")
    p.add_argument("path", type=Path, help="workspace")
    p.add_argument("files", type=Path, nargs="+", help="CSV id,label[,annotator] or Label Studio JSON export")

    p = sub.add_parser("add-images", help="add new unlabelled images to a workspace's pool (between rounds)")
    p.add_argument("path", type=Path, help="workspace")
    p.add_argument("images", type=Path, help="flat folder of new images (.png/.jpg); file names become ids")
    p.add_argument("--split", help="manifest split of the new images, e.g. test (held out; default: none)")

    p = sub.add_parser("stage", help="run one dvc.yaml stage (used by `dvc repro`)")
    p.add_argument("name", choices=("prepare", "validate", "train", "score", "query"),
                   help="a step of tasks/pipeline.py")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))
    p.add_argument("--device")

    p = sub.add_parser("serve", help="serve the round flow on a cron schedule (Prefect)")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))
    p.add_argument("--cron", default="0 * * * *", help="cron schedule (default: hourly)")
    p.add_argument("--name", default="al-round-scheduled")

    p = sub.add_parser("server", help="start a long-lived local Prefect server (UI + API) for `al` commands")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=4200, help="port of the UI and API (default: 4200)")

    p = sub.add_parser("labelstudio", help="push the round's queries to Label Studio, pull the answers back",
                       description="Token and server from the environment: LABEL_STUDIO_API_KEY, LABEL_STUDIO_URL "
                                   "(default http://localhost:8080), LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (when "
                                   "the server's document root is not the workspace). See docs/pipeline.md.")
    p.add_argument("action", choices=("push", "pull", "config"),
                   help="push: create/update the project and add the round's tasks; pull: annotations into the "
                        "inbox (disagreements held back); config: print the labelling config")
    p.add_argument("path", type=Path, nargs="?", default=Path("."))
    p.add_argument("--round", type=int, help="push: the round whose queries to push (default: the current one)")
    p.add_argument("--title", help="project title (default: 'al <workspace folder name>')")
    _add_study_parser(sub)
    return parser


def _add_study_parser(sub) -> None:
    from al_lib.study import EXPERIMENTS

    p = sub.add_parser("study", help="run the systematic study (resumable), or write its report",
                       description="Run one experiment of the seed's study, or all, as a Prefect flow: one task "
                                   "and one result file per cell under OUT/cells; a rerun skips recorded cells, and a "
                                   "cell stopped mid-way goes on from its last finished round (OUT/cells/partial). "
                                   "`al study report` writes the Markdown report from the recorded cells.")
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all", "report"), help="an experiment, all, or report")
    p.add_argument("--dataset", default="mnist",
                   help="mnist, digits, a workspace, a folder of images in class subfolders or a manifest CSV")
    p.add_argument("--quick", action="store_true", help="1 seed, tiny budgets (seconds per cell)")
    p.add_argument("--seeds", type=int, help="number of seeds (default: 5, quick: 1)")
    p.add_argument("--out", type=Path, help="study folder (default: studies/<dataset>[-quick])")
    p.add_argument("--to", type=Path, help="report: the Markdown file (default: docs/study.md for mnist, "
                                           "else OUT/study.md)")
    p.add_argument("--device", help="cuda or cpu (default: CUDA when present)")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: 1 when quick or on Dask)")
    _add_dask_options(p, "run this many cells at once")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Prefect's ephemeral API server can take 30-90 s to start on a loaded 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Offline always: no telemetry from Prefect's server or DVC (else an ERROR line per start offline).
    for name, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                        ("DVC_NO_ANALYTICS", "1")):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command in PREFECT_COMMANDS:
        from flows.server import use_recorded_server

        if not args.verbose:
            _user_errors_without_traceback()

        if url := use_recorded_server():  # a running `al server`: no ephemeral server to start
            print(f"al {args.command}: using the Prefect server at {url} (al server)", file=sys.stderr)
    try:
        return COMMANDS[args.command](args) or EXIT_OK
    except Exception as err:  # noqa: BLE001 — map every failure to a documented exit code
        code = _exit_code(err)
        print(f"al {args.command}: error: {err}", file=sys.stderr)
        if args.verbose or code == EXIT_ERROR:
            logging.getLogger(__name__).debug("traceback", exc_info=err)
        return code


class _UserErrorTracebackFilter(logging.Filter):
    """Drops the traceback from Prefect's "task/flow run failed" records when the exception is a
    user error (exit code 3 or 4): its message already names file, row and field, and the wall of
    Prefect engine frames would bury it. The record itself (one line) still reaches the console and
    the run's log in the UI; ``al -v`` keeps the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, Exception) and _exit_code(err) != EXIT_ERROR:
            record.exc_info = record.exc_text = None
        return True


def _user_errors_without_traceback() -> None:
    import prefect  # noqa: F401 — its logging setup first, so the filter is added to configured loggers

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorTracebackFilter) for f in logger.filters):
            logger.addFilter(_UserErrorTracebackFilter())


def _exit_code(err: Exception) -> int:
    from al_lib.annotations import AnnotationError
    from al_lib.data import ManifestError
    from al_lib.data.images import ImageDecodeError
    from tasks.workspace import ParamsError

    from tasks.validate import ValidationFailed

    if isinstance(err, ValidationFailed):
        return EXIT_VALIDATION
    if isinstance(err, (AnnotationError, ManifestError, ImageDecodeError, ParamsError, FileExistsError,
                        FileNotFoundError, ValueError)):
        return EXIT_BAD_INPUT
    return EXIT_ERROR


def _params_overrides(args) -> dict:
    names = ("heuristic", "query_size", "mc_iterations", "pool_subsample", "initial_labels", "initial_strategy")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_init(args) -> int:
    from tasks.create import create_workspace

    ws = create_workspace(args.path, images=args.images, manifest=args.manifest, labels=args.labels,
                          classes=args.classes.split(",") if args.classes else None, holdout=args.holdout,
                          seed=args.seed, **_params_overrides(args))
    print(f"workspace ready at {ws.root}\n  next: al round {args.path}   (or: al simulate {args.path} --rounds 3)")
    return EXIT_OK


def _precheck(path: Path, *, simulate: bool = False, allow_empty: bool = False, rerun: bool = False):
    """The user errors and the "nothing to do" answer, before Prefect's API server starts (30-90 s
    on a loaded machine): a bad params.yaml or inbox file, no labels to train on, no oracle.

    Returns the :class:`tasks.rounds.RoundPlan` (for ``simulate``, None: the oracle decides).
    """
    from tasks.cold_start import needs_cold_start
    from tasks.ingest import check_inbox
    from tasks.oracle import oracle_truth
    from tasks.rounds import labels_to_train_on, plan_round, pool_left_to_query
    from tasks.workspace import Workspace

    ws = Workspace(path)
    ws.params()
    if simulate:
        oracle_truth(ws)
        return None
    plan = plan_round(ws, allow_empty=allow_empty, rerun=rerun)
    if needs_cold_start(ws, plan):
        from dataclasses import replace

        return replace(plan, action="cold-start")  # a real workspace's first batch: tasks/cold_start.py
    if plan.action in ("start", "resume"):
        labels = check_inbox(ws, round=plan.round)[0] if ws.inbox_files() else None
        labels_to_train_on(ws, labels)
        pool_left_to_query(ws, labels)
    return plan


def _first(ids: list, n: int = 10) -> str:
    """``ids`` for a terminal: the first ``n``, and how many more."""
    return ", ".join(ids[:n]) + (f", … and {len(ids) - n} more" if len(ids) > n else "")


def _cold_start(path: Path, device=None) -> int:
    """No label yet and an empty inbox: export (or, on a rerun, point at) the cold-start query."""
    from tasks.cold_start import cold_start_query
    from tasks.lock import workspace_lock
    from tasks.rounds import pool_left_to_query
    from tasks.workspace import Workspace

    ws = Workspace(path)
    pool_left_to_query(ws)
    with workspace_lock(ws.root):  # as a round: never two writers of the workspace
        result = cold_start_query(ws, device=device)
    csv_path, json_path = (p.relative_to(ws.root) for p in ws.query_paths(0))
    next_step = (f"  next: label them (`al labelstudio push {path}`, or a CSV id,label for the ids of {csv_path}), "
                 f"put the answers in data/inbox/ (`al import-labels`), then `al round {path}` trains round 0")
    if result is None:
        print(f"round 0: the cold-start query {csv_path} is still unanswered (no label to train on, data/inbox/ "
              f"is empty): nothing to do\n{next_step}")
    else:
        print(f"round 0: no label to train on yet: cold-start query of {len(result['ids'])} of "
              f"{result['n_pool']} pool images chosen by initial_strategy {result['strategy']}\n"
              f"  ids: {_first(result['ids'])}\n  files: {csv_path}, {json_path}"
              f" (committed {(result['commit'] or '')[:7]})\n{next_step}")
    return EXIT_OK


def cmd_round(args) -> int:
    from flows.round import al_round

    plan = _precheck(args.path, allow_empty=args.allow_empty, rerun=args.rerun)
    if plan.action == "cold-start":
        return _cold_start(args.path, device=args.device)
    if plan.action == "nothing":
        _print_round({"round": plan.round, "skipped": True, "reason": plan.reason})
        return EXIT_OK
    result = al_round(str(args.path), device=args.device, allow_empty=args.allow_empty, workers=args.workers,
                      dask_address=args.dask_address, rerun=args.rerun)
    _print_round(result)
    return EXIT_OK


def cmd_simulate(args) -> int:
    from flows.round import al_simulate

    _precheck(args.path, simulate=True)
    if args.baseline:
        from tasks.baseline import check_baseline
        from tasks.workspace import Workspace

        check_baseline(Workspace(args.path), args.baseline)
    for result in al_simulate(str(args.path), rounds=args.rounds, device=args.device, workers=args.workers,
                              dask_address=args.dask_address, baseline=args.baseline):
        if "baseline" in result:
            accuracy = ", ".join(f"{r['test_accuracy']:.4f}" for r in result["rows"])
            print(f"{result['baseline']} reference, {result['rounds']} rounds: test accuracy {accuracy}; "
                  f"learning curves of both in {result['plot']}")
        else:
            _print_round(result)
    return cmd_status(args)


def _print_round(result: dict) -> None:
    if result.get("skipped"):
        print(f"round {result['round']}: skipped ({result['reason']})")
        return
    m = result["metrics"]
    acc = m.get("test_accuracy", m.get("val_accuracy"))
    acc_text = f", accuracy {acc:.4f}" if acc is not None else ""
    ran = ", ".join(result["steps_run"]) or "none (all up to date)"
    print(f"round {result['round']}: {m['n_labelled']} labels{acc_text}; steps run: {ran}; tagged {result['tag']}; "
          f"queries in {result['queries']}")


def cmd_status(args) -> int:
    import pandas as pd

    from tasks import dvc_repo, git_repo
    from tasks.pipeline import ROUND_STEPS
    from tasks.rounds import round_state
    from tasks.workspace import ROUNDS_METRICS, Workspace

    ws = Workspace(args.path)
    params = ws.params()
    labels = ws.labels()
    state = round_state(ws)
    tags = git_repo.list_round_tags(ws.root)
    print(f"workspace {ws.root}")
    print(f"  rounds tagged: {', '.join(f'round-{t}' for t in tags) or 'none'}; "
          + (f"round {state.round} finished, the next starts when annotations arrive" if state.finished
             else f"round {state.round} in progress (`al round` resumes it)"))
    is_held_out = labels["id"].isin(ws.held_out_ids())
    train = labels[~is_held_out]
    counts = train["label"].value_counts().reindex(params.classes, fill_value=0)
    print(f"  labels to train on: {len(train)}  " + "  ".join(f"{c}={n}" for c, n in counts.items())
          + (f"  (+ {int(is_held_out.sum())} held-out labels that measure the model)" if is_held_out.any() else ""))
    stale = {s.name: r for s in ROUND_STEPS if (r := dvc_repo.stage_changes(ws.root, s.name))}
    print("  pipeline: " + ("up to date (dvc.lock)" if not stale else
                            "out of date: " + "; ".join(f"{k} ({v[0]})" for k, v in stale.items())))
    pending = ws.inbox_files()
    print(f"  inbox: {len(pending)} file(s) waiting" + (f" ({', '.join(p.name for p in pending)})" if pending else ""))
    rounds_csv = ws.path(ROUNDS_METRICS)
    if rounds_csv.is_file():
        table = pd.read_csv(rounds_csv)
        cols = [c for c in ("round", "n_labelled", "epochs", "val_accuracy", "test_accuracy", "test_nll")
                if c in table]
        print("  metrics per round:")
        print("    " + table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}").replace("\n", "\n    "))
    png = ws.path("metrics/learning_curve.png")
    if png.is_file():
        print(f"  learning curve: {png}")
    from tasks.stopping import read_stopping, stopping_lines

    record = read_stopping(ws)
    for line in stopping_lines(record):
        print(f"  {line}" + (f" (round {record['round']})" if record and record.get("decisions") else ""))
    return EXIT_OK


def cmd_import_labels(args) -> int:
    """Check each file completely first — with the labels and the files already waiting, as the
    next round will merge them — and copy them into the inbox only when all are valid and bring
    at least one new label."""
    from tasks.ingest import check_inbox
    from tasks.rounds import round_state
    from tasks.workspace import INBOX, LABELS, Workspace

    ws = Workspace(args.path)
    inbox = ws.path(INBOX)
    names = [f.name for f in args.files]
    clashes = sorted({n for n in names if names.count(n) > 1 or (inbox / n).exists()})
    if clashes:  # checked before copying anything: all files are queued, or none
        raise FileExistsError(f"{inbox}: {', '.join(clashes)} already waiting or given twice: rename the new file")
    waiting = ws.inbox_files()
    _, report = check_inbox(ws, waiting + list(args.files), round=round_state(ws).next_round)
    if report.n_new == 0:
        raise ValueError(f"{', '.join(map(str, args.files))}: no new label — every annotation is already in "
                         f"{LABELS}{' or waiting in the inbox' if waiting else ''}: nothing was queued")
    inbox.mkdir(parents=True, exist_ok=True)
    for f in args.files:
        dest = inbox / f.name
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(f, tmp)
        os.replace(tmp, dest)
        print(f"{f}: queued in {dest.relative_to(ws.root)}")
    print(f"{report.n_new} new labels ({report.n_already_present} already present) wait in the inbox: "
          f"run `al round {args.path}` to merge them")
    return EXIT_OK


def cmd_add_images(args) -> int:
    from tasks.add_images import add_images
    from tasks.workspace import HELD_OUT_SPLITS, IMAGE_CHECKS, Workspace

    ws = Workspace(args.path)
    added = add_images(ws.root, args.images, split=args.split, image_cache=ws.path(IMAGE_CHECKS))
    split = f", split {args.split}" if args.split else ""
    held_out = (args.split or "").lower() in HELD_OUT_SPLITS
    print(f"added {len(added.ids)} unlabelled images to the pool of {ws.root} ({added.n_pool} in all{split}); "
          f"commit {added.commit[:7] if added.commit else 'none'}\n  "
          + ("held out: never queried" if held_out else "they can be queried from the next round on"))
    return EXIT_OK


def cmd_stage(args) -> int:
    from tasks import stages

    stages.run_stage(args.name, Path(args.path), device=getattr(args, "device", None))
    return EXIT_OK


def cmd_serve(args) -> int:
    from flows.round import al_round

    print(f"serving {args.name}: al-round on {Path(args.path).resolve()} with cron '{args.cron}' (Ctrl-C stops)")
    al_round.serve(name=args.name, cron=args.cron, parameters={"workspace": str(Path(args.path).resolve())})
    return EXIT_OK


def cmd_server(args) -> int:
    from flows.server import run_server

    return run_server(args.host, args.port)


#: Commands that talk to a Prefect API (an `al server`'s when one runs, else an ephemeral one).
PREFECT_COMMANDS = ("round", "simulate", "serve", "study")

def cmd_labelstudio(args) -> int:
    from al_lib.export import label_studio_config
    from tasks import labelstudio
    from tasks.workspace import Workspace

    ws = Workspace(args.path)
    if args.action == "config":
        print(label_studio_config(ws.params().classes), end="")
        return EXIT_OK
    client = labelstudio.Client.from_env()
    if args.action == "push":
        r = labelstudio.push(ws, client, round=args.round, title=args.title)
        print(f"{'created' if r['created'] else 'updated'} Label Studio project {r['project']}: {r['n_new']} new "
              f"task(s) from round {r['round']} ({r['n_present']} already there)\n  label them at {r['url']}, "
              f"then: al labelstudio pull {args.path}")
        return EXIT_OK
    r = labelstudio.pull(ws, client, title=args.title)
    for message in r["held_back"] + r["changed"]:
        print(f"al labelstudio pull: {message}", file=sys.stderr)
    if r["file"]:
        print(f"pulled {r['n_tasks']} annotated task(s) from project {r['project']} into {r['file']}"
              f"\n  next: al round {args.path}")
    else:
        print(f"project {r['project']}: no new annotations to pull")
    if r["held_back"]:
        print(f"  {len(r['held_back'])} task(s) held back: their annotators disagree (see above)")
    return EXIT_OK


def cmd_study(args) -> int:
    from flows.study import default_out, write_study_report

    if not args.verbose:  # the flow logs each cell in words; al_lib's per-epoch lines would drown them
        logging.getLogger("al_lib").setLevel(logging.WARNING)
    out = args.out or default_out(args.dataset, args.quick)
    if args.experiment == "report":
        to = args.to or (Path("docs/study.md") if args.dataset == "mnist" and not args.quick else out / "study.md")
        print(f"report written to {write_study_report(out, to)}")
        return EXIT_OK
    from flows.study import al_study

    result = al_study(args.experiment, dataset=args.dataset, quick=args.quick, seeds=args.seeds, out=str(out),
                      workers=args.workers, dask_address=args.dask_address, device=args.device, threads=args.threads)
    print(f"study {result['experiment']}: {result['ran']} cells run, {result['reused']} copied from the same run "
          f"under another experiment, {result['skipped']} already recorded, "
          f"{result['cells']} in all ({result['seconds']:.1f} s); records in {Path(result['out']) / 'cells'}\n"
          f"  next: al study report --dataset {args.dataset}{' --quick' if args.quick else ''} --out {out}")
    return EXIT_OK


COMMANDS = {
    "init": cmd_init, "round": cmd_round, "simulate": cmd_simulate, "status": cmd_status,
    "import-labels": cmd_import_labels, "add-images": cmd_add_images, "stage": cmd_stage, "serve": cmd_serve,
    "server": cmd_server, "labelstudio": cmd_labelstudio, "study": cmd_study,
}

if __name__ == "__main__":
    sys.exit(main())
