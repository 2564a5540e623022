"""The one console script, ``ctfleet``.

Progress goes to stderr; where a command says so, its last stdout line is one
JSON object. Exit 0 on success, 2 on bad input (an ``error:`` line with the
reason code and what to do), 1 on anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ctfleet.errors import BadInput
from ctfleet.logs import configure_logging
from ctfleet.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctfleet", description="Chest CT triage on a fleet of spot GPU machines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("analyze", help="analyse one study on this machine (no AWS)")
    p.add_argument("input", type=Path, help="folder of DICOM files (searched recursively) or a .nii/.nii.gz file")
    p.add_argument("--out", type=Path, required=True, help="output folder (labels.nii.gz, report.json, overlay/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--model", default="default", help="analyzer name (default: the built-in lung analyzer)")
    p.add_argument("--high-threshold", type=float, default=None, help="score at which a study triages HIGH")
    p.add_argument("--seg", action="store_true",
                   help="also write seg.dcm, a DICOM SEG referencing the input series (DICOM input only)")

    p = sub.add_parser("deid", help="de-identify every series under INPUT into OUTPUT (PS3.15 basic profile)")
    p.add_argument("input", type=Path, help="folder of DICOM files (searched recursively)")
    p.add_argument("output", type=Path, help="output folder (created; must not exist yet or be empty)")
    p.add_argument("--facility", required=True, help="facility id (lowercase slug)")
    p.add_argument("--secret-file", type=Path, default=None,
                   help="file holding the facility's secret (its bytes); default: the local stack's secret")

    p = sub.add_parser("local", help="the whole stack on this machine")
    local_sub = p.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    up = local_sub.add_parser("up", help="run moto, the handlers, the workers and the web page until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--port", type=int, default=8080, help="port of the web page and API (0: any free port)")

    p = sub.add_parser("demo", help="send synthetic studies (and any folders given) from upload to alert")
    p.add_argument("folders", nargs="*", type=Path, help="extra study folders to send")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for every study")

    p = sub.add_parser("worker", help="the job loop of one GPU instance")
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    p.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    try:
        if args.command == "analyze":
            return cmd_analyze(args, settings)
        if args.command == "deid":
            return cmd_deid(args, settings)
        if args.command == "local":
            return cmd_local_up(args, settings)
        if args.command == "demo":
            from ctfleet.local.demo import main as demo_main

            for folder in args.folders:
                if not folder.is_dir():
                    raise BadInput("no_input", f"{folder} is not a folder")
            return demo_main(settings, list(args.folders), workers=args.workers, timeout_s=args.timeout)
        if args.command == "worker":
            from worker.loop import main as worker_main

            return worker_main(settings, max_jobs=args.max_jobs, idle_exit_s=args.idle_exit)
    except BadInput as exc:
        print(f"error: {exc.reason}: {exc.detail or 'bad input'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - exit 1 with a readable line, details in the log
        logging.getLogger("ctfleet").exception("command failed")
        print(f"error: internal: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 1


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    from ctfleet.intake import load_study

    t0 = time.perf_counter()
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise BadInput("output_exists", f"{args.out} exists and is not an empty folder; choose a new --out")
    study = load_study(args.input)
    volume = study.volume
    t_read = time.perf_counter()
    print(f"analyze: volume {volume.shape} spacing {tuple(round(s, 3) for s in volume.spacing_mm)} mm",
          file=sys.stderr)
    from model import ModelError
    from model.volume import VolumeError

    from ctfleet.aws.model_store import resolve
    from ctfleet.results.files import render, write

    threshold = args.high_threshold if args.high_threshold is not None else settings.high_threshold
    try:
        s3 = None
        if args.model.startswith("s3://"):
            from ctfleet.aws.clients import Clients

            s3 = Clients(settings).s3
        analyzer = resolve(args.model, s3_client=s3, cache_dir=Path(settings.model_cache_dir).expanduser(),
                           device=args.device)
        analysis = analyzer(volume, args.device, high_threshold=threshold)
    except (VolumeError, ModelError) as exc:
        raise BadInput(exc.reason, str(exc)) from exc
    report = dict(analysis.report)
    report.setdefault("timings_s", {})
    report["timings_s"] = {**report["timings_s"], "read": round(t_read - t0, 4)}
    files = render(replace(analysis, report=report), volume,
                   source_datasets=study.source_datasets if args.seg else None)
    write(files, args.out)
    report["timings_s"]["command"] = round(time.perf_counter() - t0, 4)
    print(f"analyze: wrote {len(files)} files to {args.out}", file=sys.stderr)
    print(json.dumps(report, sort_keys=True))
    return 0


def cmd_deid(args: argparse.Namespace, settings: Settings) -> int:
    from ctfleet.contracts import check_facility
    from ctfleet.cli.deid import NothingAccepted, run

    facility = check_facility(args.facility)
    if args.secret_file is not None:
        try:
            secret = args.secret_file.read_bytes().strip()
        except OSError as exc:
            raise BadInput("no_secret", f"cannot read --secret-file {args.secret_file}") from exc
        if len(secret) < 16:
            raise BadInput("no_secret", "the secret file must hold at least 16 bytes (e.g. 64 hex characters)")
    else:
        from ctfleet.local.secrets import local_secret

        secret = local_secret(settings, facility)
    if not args.input.is_dir():
        raise BadInput("no_input", f"{args.input} is not a folder")
    try:
        result = run(args.input, args.output, facility, secret)
    except NothingAccepted as exc:
        print(json.dumps(exc.result, sort_keys=True))  # what was rejected, and why; then exit 2
        raise
    accepted = sum(a["files"] for a in result["accepted"])
    print(f"deid: {len(result['accepted'])} series ({accepted} files) written to {args.output}, "
          f"{len(result['rejected'])} rejected", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_local_up(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from ctfleet.local.stack import LocalStack

    stop = threading.Event()
    # Ctrl-C and SIGTERM both stop everything cleanly, even where SIGINT arrives
    # ignored (a background job of a non-interactive shell).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(settings, workers=args.workers, api_port=args.port).start()
    try:
        print(f"local: stack up with {args.workers} worker(s); Ctrl-C stops it", file=sys.stderr)
        print(json.dumps(stack.urls()), flush=True)
        while not stop.wait(1.0):
            for i, proc in enumerate(stack.workers):
                if proc.poll() is not None:
                    print(f"local: worker {i} exited ({proc.returncode}); starting a new one", file=sys.stderr)
                    stack.start_worker(i)
        print("local: stopping", file=sys.stderr)
    finally:
        stack.stop()
    return 0
