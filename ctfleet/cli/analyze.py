"""``ctfleet analyze INPUT --out DIR``: one study on this machine, no AWS (except an ``s3://`` model)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ctfleet.aws.clients import Clients
from ctfleet.aws.model_store import resolve
from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake import load_study
from ctfleet.results.files import render, write
from ctfleet.settings import Settings
from model import ModelError
from model.volume import VolumeError


def command(args: argparse.Namespace, settings: Settings) -> int:
    t0 = time.perf_counter()
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise BadInput(Reason.OUTPUT_EXISTS, f"{args.out} exists and is not an empty folder; choose a new --out")
    study = load_study(args.input)
    volume = study.volume
    t_read = time.perf_counter()
    print(f"analyze: volume {volume.shape} spacing {tuple(round(s, 3) for s in volume.spacing_mm)} mm",
          file=sys.stderr)
    threshold = args.high_threshold if args.high_threshold is not None else settings.high_threshold
    try:
        s3 = None
        if args.model.startswith("s3://"):
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
