"""The fleet's figures for ``make bench``, on the local stack with the phantoms.

- **Backlog**: ``--studies`` backfill studies are uploaded and ingested before any worker starts,
  then real worker processes drain them, with prefetch and without, each run in a fresh process.
  From the study records: studies per hour per worker, and the share of each worker's time, from
  its first analysis to its last, in which the analysis stage sat idle (no model running).
  The ratio of the throughputs with and without prefetch is what the overlap buys, measured in
  the same ``make bench``.
- **From zero**: one urgent study uploaded to a fleet of zero instances; upload to DONE, with the
  boot delay the local fleet plays stated (on AWS the boot of a GPU instance from the AMI
  replaces it).

Without a GPU the model runs on the same cores as the reading and writing threads: with two
workers on two cores every stage competes for the CPU, so the overlap keeps the model busy but
cannot add throughput. One worker on two cores shows what it buys when the model has a device
(here: a core) of its own, as on a GPU instance.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ctfleet.settings import Settings


@dataclass(frozen=True)
class BacklogRun:
    prefetch: bool
    studies: int
    workers: int
    per_hour_per_worker: float
    analysis_idle: float  # mean over workers
    analysis_idle_max: float
    analyze_s_median: float
    wall_s: float


def phantom_files(n: int) -> list[tuple[str, bytes]]:
    """A synthetic chest study of its own (new UIDs each call), alternately clean and with opacities."""
    from ctfleet.dev.phantom import from_preset
    from ctfleet.dev.synthetic import series_to_datasets
    from ctfleet.intake import dataset_to_bytes

    p = from_preset("high" if n % 2 else "clean", seed=n)
    datasets = series_to_datasets(p.hu, p.spacing_mm, patient_id=f"BENCH-{n}")
    return [(f"IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def analysis_idle(records: list[dict[str, Any]]) -> float:
    """One worker's share of time, first analysis start to last analysis end, with no model running."""
    windows = sorted((float(r["analysis_started_at"]), float(r["analysis_ended_at"])) for r in records)
    span = windows[-1][1] - windows[0][0]
    busy = sum(end - start for start, end in windows)
    return max(0.0, 1.0 - busy / span) if span > 0 else 0.0


def run_backlog(settings: Settings, files: list[list[tuple[str, bytes]]], *, workers: int,
                prefetch: bool) -> BacklogRun:
    from ctfleet.aws.records import Table
    from ctfleet.aws.repositories import Studies
    from ctfleet.cli.client import ApiClient
    from ctfleet.local.stack import LocalStack

    with LocalStack(replace(settings, worker_prefetch=prefetch), workers=0) as stack:
        api = ApiClient(stack.api_url + "/api", token=stack.token(settings.facilities[0], "it"))
        sent = [api.send(settings.facilities[0], f, priority="backfill") for f in files]
        for s in sent:
            api.complete(s.upload_id)
        keys = [_wait(lambda u=s.upload_id: api.get_upload(u).get("study_key"), 120, "ingest") for s in sent]
        for i in range(workers):  # the backlog is whole before the first worker asks for work
            stack.start_worker(i)
        studies = Studies(Table(stack.clients.dynamodb, stack.settings.studies_table))
        records = [_wait(lambda k=k: (r := studies.get(k)) and r.get("status") == "DONE" and r,
                         900, "the backlog to drain") for k in keys]
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_worker.setdefault(str(r["worker_instance"]), []).append(r)
    idle = [analysis_idle(rs) for rs in by_worker.values()]
    rates = [len(rs) / (max(float(r["done_at"]) for r in rs) - min(float(r["started_at"]) for r in rs)) * 3600.0
             for rs in by_worker.values()]
    wall = max(float(r["done_at"]) for r in records) - min(float(r["started_at"]) for r in records)
    return BacklogRun(prefetch=prefetch, studies=len(records), workers=len(by_worker),
                      per_hour_per_worker=statistics.mean(rates), analysis_idle=statistics.mean(idle),
                      analysis_idle_max=max(idle),
                      analyze_s_median=statistics.median(float(r["analysis_ended_at"]) - float(r["analysis_started_at"])
                                                         for r in records),
                      wall_s=wall)


def run_from_zero(settings: Settings, files: list[tuple[str, bytes]], *, boot_s: float) -> dict[str, float]:
    """Upload one urgent study to a fleet at zero; seconds from the first byte sent to DONE."""
    from ctfleet.cli.client import ApiClient
    from ctfleet.local.stack import LocalStack

    with LocalStack(settings, fleet_max=1, boot_s=boot_s, scaler_interval_s=60.0) as stack:
        api = ApiClient(stack.api_url + "/api", token=stack.token(settings.facilities[0], "clinician"))
        assert stack.fleet is not None and stack.fleet.size == 0
        t0 = time.time()
        up = api.upload(settings.facilities[0], files)
        state = api.wait(up.upload_id, timeout_s=600)
        study = state["study"] or {}
        if study.get("status") != "DONE":
            raise RuntimeError(f"the urgent study ended {study.get('status')}: {study.get('reason')}")
        record = stack.record(study["study_key"])  # GPU seconds are finance's, not in a clinician's view
        if record is None:
            raise RuntimeError("the DONE study has no record")
        return {"upload_to_done_s": float(record["done_at"]) - t0, "boot_s": boot_s,
                "queued_to_started_s": float(record["started_at"]) - float(record["queued_at"]),
                "worker_s": float(record["gpu_seconds"])}


def table(runs: list[BacklogRun], zero: dict[str, float]) -> str:
    first = runs[0]
    lines = [
        f"Backlog: {first.studies} phantom studies (alternately clean and with opacities) queued before the "
        "workers start; each run in a fresh process.",
        "",
        "| workers | prefetch | studies/hour/worker | analysis stage idle (mean of workers) | worst worker "
        "| median analyze | wall | prefetch's throughput (× without) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    without = {r.workers: r for r in runs if not r.prefetch}
    for r in runs:
        gain = f"{r.per_hour_per_worker / without[r.workers].per_hour_per_worker:.2f}×" \
            if r.prefetch and r.workers in without else ""
        lines.append(f"| {r.workers} | {'on' if r.prefetch else 'off'} | {r.per_hour_per_worker:.0f} "
                     f"| {r.analysis_idle:.1%} | {r.analysis_idle_max:.1%} | {r.analyze_s_median:.2f} s "
                     f"| {r.wall_s:.1f} s | {gain} |")
    lines += [
        "",
        f"From a fleet of zero: one urgent study, upload to DONE in {zero['upload_to_done_s']:.1f} s, of which "
        f"queued to started {zero['queued_to_started_s']:.1f} s (the scaler's nudge, a played boot delay of "
        f"{zero['boot_s']:.0f} s, the worker process starting and loading the model) and the worker's "
        f"{zero['worker_s']:.1f} s on the study.",
    ]
    return "\n".join(lines)


def _in_own_process(*args: str) -> dict[str, Any]:
    """One run in a fresh process: moto keeps its state per process, and a second stack in the same
    process serves its requests from the first one's leftovers, slower (measured: the order of the
    runs changed the figures)."""
    out = subprocess.run([sys.executable, "-m", "ctfleet.dev.fleet_bench", *args], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(*, studies: int = 20, workers: tuple[int, ...] = (2, 1), boot_s: float = 5.0) -> str:
    """Every run, as the markdown for docs/benchmarks.md."""
    runs = []
    for n in workers:
        for prefetch in (False, True):
            print(f"bench: {studies} studies on {n} workers, prefetch {'on' if prefetch else 'off'} ...",
                  file=sys.stderr)
            runs.append(BacklogRun(**_in_own_process("backlog", "--studies", str(studies), "--workers", str(n),
                                                     *(["--prefetch"] if prefetch else []))))
    print("bench: one urgent study from a fleet of zero ...", file=sys.stderr)
    zero = _in_own_process("zero", "--boot-s", str(boot_s))
    return table(runs, zero)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctfleet.dev.fleet_bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="run", required=True)
    backlog = sub.add_parser("backlog", help="one backlog run; prints its figures as JSON")
    backlog.add_argument("--studies", type=int, default=20)
    backlog.add_argument("--workers", type=int, default=2)
    backlog.add_argument("--prefetch", action="store_true")
    zero = sub.add_parser("zero", help="one urgent study from a fleet of zero; prints its figures as JSON")
    zero.add_argument("--boot-s", type=float, default=5.0)
    sub.add_parser("all", help="both backlog runs and the run from zero, as a markdown table")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the moto server's access log
    settings = Settings(stack="ctfbench", facilities=("bench",))
    if args.run == "backlog":
        files = [phantom_files(n) for n in range(args.studies)]
        print(json.dumps(asdict(run_backlog(settings, files, workers=args.workers, prefetch=args.prefetch))))
    elif args.run == "zero":
        print(json.dumps(run_from_zero(settings, phantom_files(0), boot_s=args.boot_s)))
    else:
        print(main())
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
