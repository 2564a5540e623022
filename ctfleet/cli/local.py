"""``ctfleet local up`` and ``ctfleet demo``: the whole stack on this machine."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings


def up(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()
    # Ctrl-C and SIGTERM both stop everything cleanly, even where SIGINT arrives
    # ignored (a background job of a non-interactive shell).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(settings, fleet_max=args.fleet_max, boot_s=args.boot_delay, api_port=args.port).start()
    try:
        print(f"local: stack up, fleet of 0..{args.fleet_max} instance(s) ({args.boot_delay:g} s boot); "
              "Ctrl-C stops it", file=sys.stderr)
        print(json.dumps(stack.urls()), flush=True)
        size = 0
        while not stop.wait(1.0):
            size = _report_fleet(stack, size)
        print("local: stopping", file=sys.stderr)
    finally:
        stack.stop()
    return 0


def token(args: argparse.Namespace, settings: Settings) -> int:
    """``ctfleet local token``: an access token of a user of the running local stack."""
    from ctfleet.local.identity import LocalPool, state_path

    path = state_path(settings)
    pool = LocalPool.load(path)
    name = pool.user(args.facility, args.role, args.user)
    pool.save(path)  # a new user's password, for the next call
    signed = pool.sign_in(name)
    print(f"local: signed in {name} ({args.role} of {args.facility})", file=sys.stderr)
    print(json.dumps({"token": signed["token"], "expires_at": signed["expires_at"]}))
    return 0


def _report_fleet(stack: LocalStack, last: int) -> int:
    size = stack.fleet.size if stack.fleet is not None else 0
    if size != last:
        print(f"local: fleet {size} instance(s)", file=sys.stderr)
    return size


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from ctfleet.local.demo import main as demo_main

    for folder in args.folders:
        if not folder.is_dir():
            raise BadInput(Reason.NO_INPUT, f"{folder} is not a folder")
    return demo_main(settings, list(args.folders), fleet_max=args.fleet_max, timeout_s=args.timeout)


def scale(args: argparse.Namespace, settings: Settings) -> int:
    """``ctfleet scale [--dry-run]``: one scaler pass against the configured endpoint; the Decision last."""
    from ctfleet.aws.clients import Clients
    from dispatcher.deps import HandlerDeps
    from dispatcher.scaler import scale as one_pass

    decision = one_pass(HandlerDeps(Clients(settings)), dry_run=args.dry_run)
    print(f"scale: capacity {decision.capacity} ({decision.reason})" + (" [dry run]" if args.dry_run else ""),
          file=sys.stderr)
    print(decision.to_json())
    return 0
