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


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from ctfleet.local.demo import main as demo_main

    for folder in args.folders:
        if not folder.is_dir():
            raise BadInput(Reason.NO_INPUT, f"{folder} is not a folder")
    return demo_main(settings, list(args.folders), workers=args.workers, timeout_s=args.timeout)
