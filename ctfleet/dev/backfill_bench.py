"""The backfill's figures for ``make bench``: ``ctfleet backfill`` on generated messy archives
(:func:`ctfleet.dev.archive.messy_archive`, 16 slices of 64 x 64 per study) against the local
stack (moto, the API and ingest running; no worker), each size in a fresh process.

- **Scan**: files per second and MB per second of the scan (every file read, checked as ingest
  checks it, hashed, journaled), beside a raw copy of the same files on the same disk
  (``shutil.copytree``, page cache warm for both).
- **Upload**: MB per second from the first upload created to the last completed (``--jobs 4``),
  beside the floor the local stack itself sets: the same bytes written with boto3's
  ``put_object`` to the same moto server, one after the other (moto serves every S3 request in
  one Python process; the presigned POSTs go through it as well).
- **Memory**: the backfill process's peak RSS (``getrusage`` of that process alone). The journal
  holds the archive, not the process: the peak must not grow with the number of studies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ctfleet.settings import Settings

# Runs a command and prints, as JSON, its last stdout line and its own peak RSS (KiB on Linux).
_MEASURE = ("import json, resource, subprocess, sys\n"
            "out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True, check=True).stdout\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps({'result': json.loads(out.strip().splitlines()[-1]), 'peak_rss_kib': peak}))\n")


def _tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _moto_put_rate(stack: Any, root: Path, limit: int = 300) -> float:
    """MB/s of plain ``put_object`` calls of the archive's first files to the stack's S3 (outside raw/,
    so no event follows)."""
    files = sorted(p for p in root.rglob("*.dcm") if p.is_file())[:limit]
    blobs = [p.read_bytes() for p in files]
    t = time.perf_counter()
    for i, blob in enumerate(blobs):
        stack.clients.s3.put_object(Bucket=stack.settings.results_bucket, Key=f"bench/floor/{i}", Body=blob)
    return sum(map(len, blobs)) / 1e6 / (time.perf_counter() - t)


def run_one(studies: int, work: Path) -> dict[str, Any]:
    """One archive of ``studies`` studies: raw copy, then the backfill against a fresh local stack."""
    from ctfleet.dev.archive import messy_archive
    from ctfleet.local.stack import LocalStack

    archive = messy_archive(work / "export", studies)
    files, size = _tree_size(archive.root)
    t = time.perf_counter()
    shutil.copytree(archive.root, work / "copy")
    copy_s = time.perf_counter() - t
    shutil.rmtree(work / "copy")
    settings = Settings(stack="ctfbfbench", facilities=("bench",))
    with LocalStack(settings, workers=0) as stack:
        floor_mb_per_s = _moto_put_rate(stack, archive.root)
        env = {**os.environ, "CTFLEET_HOME": str(work / "home"), "CTFLEET_TOKEN": stack.token("bench", "it")}
        out = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "ctfleet", "backfill",
                              str(archive.root), "--api", stack.api_url + "/api", "--jobs", "4", "--no-progress"],
                             stdout=subprocess.PIPE, text=True, check=True, env=env).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    result = measured["result"]
    mb = size / 1e6
    return {"studies": studies, "files": files, "mb": round(mb, 1), "copy_files_per_s": files / copy_s,
            "copy_mb_per_s": mb / copy_s, "scan_files_per_s": files / result["scan_seconds"],
            "scan_mb_per_s": mb / result["scan_seconds"],
            "upload_mb_per_s": result["sent_bytes"] / 1e6 / result["send_seconds"],
            "moto_put_mb_per_s": floor_mb_per_s,
            "uploaded": result["uploaded"], "peak_rss_mib": measured["peak_rss_kib"] / 1024}


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| studies | files | MB | raw copy files/s | scan files/s | scan / copy | raw copy MB/s | upload MB/s "
             "| upload / copy | moto put MB/s | upload / moto put | peak RSS MiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r['studies']} | {r['files']} | {r['mb']} | {r['copy_files_per_s']:.0f} | "
                     f"{r['scan_files_per_s']:.0f} | {r['scan_files_per_s'] / r['copy_files_per_s']:.3f} | "
                     f"{r['copy_mb_per_s']:.0f} | {r['upload_mb_per_s']:.2f} | "
                     f"{r['upload_mb_per_s'] / r['copy_mb_per_s']:.4f} | {r['moto_put_mb_per_s']:.2f} | "
                     f"{r['upload_mb_per_s'] / r['moto_put_mb_per_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        lines.append("")
        lines.append(f"Peak RSS at {large['studies']} studies is {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x "
                     f"that at {small['studies']} ({large['studies'] // small['studies']}x the archive).")
    return "\n".join(lines)


def main(sizes: tuple[int, ...] = (50, 200)) -> str:
    runs = []
    for n in sizes:
        print(f"bench: backfill of {n} studies ...", file=sys.stderr)
        out = subprocess.run([sys.executable, "-m", "ctfleet.dev.backfill_bench", "one", "--studies", str(n)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return table(runs)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctfleet.dev.backfill_bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="run", required=True)
    one = sub.add_parser("one", help="one archive size; prints its figures as JSON")
    one.add_argument("--studies", type=int, default=50)
    sub.add_parser("all", help="50 and 200 studies, as a markdown table")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if args.run == "one":
        with tempfile.TemporaryDirectory(prefix="ctfleet-bfbench-") as tmp:
            print(json.dumps(run_one(args.studies, Path(tmp))))
    else:
        print(main())
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
