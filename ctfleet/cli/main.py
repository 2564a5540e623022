"""The one console script, ``ctfleet``.

Progress goes to stderr; where a command says so, its last stdout line is one
JSON object. Exit 0 on success, 2 on bad input (an ``error:`` line with the
reason code and what to do), 1 on anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ctfleet.errors import BadInput, Refused, Transient
from ctfleet.logs import configure_logging
from ctfleet.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctfleet", description="Chest CT triage on a fleet of spot GPU machines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("analyze", help="analyze one study on this machine (no AWS)")
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
    up.add_argument("--fleet-max", type=int, default=2, help="most instances the fleet may grow to (from 0)")
    up.add_argument("--boot-delay", type=float, default=5.0, help="seconds an instance takes to boot")
    up.add_argument("--port", type=int, default=8080, help="port of the web page and API (0: any free port)")

    tok = local_sub.add_parser("token", help="sign in a local user; prints {token, expires_at} as the last line")
    tok.add_argument("--facility", required=True, help="the user's facility")
    tok.add_argument("--role", required=True, choices=("clinician", "radiologist", "it", "finance"))
    tok.add_argument("--user", default=None, help="user name (default <facility>-<role>; created if needed)")

    p = sub.add_parser("demo", help="send synthetic studies (and any folders given) from upload to alert")
    p.add_argument("folders", nargs="*", type=Path, help="extra study folders to send")
    p.add_argument("--fleet-max", type=int, default=2, help="most instances the fleet may grow to (from 0)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for every study")

    from .backfill.command import add_arguments as backfill_arguments

    backfill_arguments(sub)
    from .cost import add_arguments as cost_arguments

    cost_arguments(sub)

    p = sub.add_parser("scale", help="one scaler pass: size the GPU fleet from the queues")
    p.add_argument("--dry-run", action="store_true", help="decide and print, change nothing")

    p = sub.add_parser("worker", help="the job loop of one GPU instance")
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    p.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (0 done, 2 bad input, 1 anything else, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    command = "local " + args.local_command if args.command == "local" else args.command
    try:
        return COMMANDS[command](args, settings)
    except BadInput as exc:
        print(f"error: {exc.reason}: {exc.detail or 'bad input'}", file=sys.stderr)
        return 2
    except Refused as exc:  # the API said no: sign in again, or ask for the role that may
        print(f"error: {exc.reason}: {exc.detail or 'refused'}", file=sys.stderr)
        return 2
    except Transient as exc:
        print(f"error: {exc.reason}: {exc.detail or 'the service is unavailable'}; try again later", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the outermost loop: exit 1 with a readable line, details in the log
        logging.getLogger("ctfleet").exception("command failed")
        print(f"error: internal: {type(exc).__name__}", file=sys.stderr)
        return 1


# Each command's module is imported when it runs: `ctfleet deid` never pays for torch,
# `ctfleet worker` never for the local stack.
def _analyze(args: argparse.Namespace, settings: Settings) -> int:
    from .analyze import command

    return command(args, settings)


def _deid(args: argparse.Namespace, settings: Settings) -> int:
    from .deid import command

    return command(args, settings)


def _local_up(args: argparse.Namespace, settings: Settings) -> int:
    from .local import up

    return up(args, settings)


def _local_token(args: argparse.Namespace, settings: Settings) -> int:
    from .local import token

    return token(args, settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .local import demo

    return demo(args, settings)


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from .backfill.command import command

    return command(args, settings)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from .backfill.command import status

    return status(args, settings)


def _cost(args: argparse.Namespace, settings: Settings) -> int:
    from .cost import command

    return command(args, settings)


def _scale(args: argparse.Namespace, settings: Settings) -> int:
    from .local import scale

    return scale(args, settings)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.main import main as worker_main

    return worker_main(settings, max_jobs=args.max_jobs, idle_exit_s=args.idle_exit)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "analyze": _analyze,
    "deid": _deid,
    "local up": _local_up,
    "local token": _local_token,
    "demo": _demo,
    "backfill": _backfill,
    "status": _status,
    "cost": _cost,
    "scale": _scale,
    "worker": _worker,
}
