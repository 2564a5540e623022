"""``ctfleet backfill DIR``, ``ctfleet backfill status DIR`` and ``ctfleet status [STUDY_KEY]``.

Progress (a tqdm bar) and the final table go to stderr; the last stdout line is JSON:
``{"studies", "uploaded", "skipped_duplicate", "rejected", "failed", "files_unreadable",
"seconds", ...}``. The journal and the manifest live under ``CTFLEET_HOME/backfill/``
(one folder per archive), or where ``--journal`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ctfleet.contracts import Reason, UploadStatus
from ctfleet.errors import BadInput
from ctfleet.settings import Settings

from ..client import ApiClient, print_columns
from .journal import Journal, State, journal_path
from .manifest import manifest_path, refresh, write_manifest
from .scan import classify, walk
from .sender import Outcome, Sender, Throttle

SCAN_BATCH = 500  # files classified per journal transaction


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("backfill", help="push an archive of studies (folders, zips, DICOMDIR) as backfill")
    p.add_argument("dir", type=Path, help="the archive: a folder, searched recursively ('status DIR' refreshes)")
    p.add_argument("status_dir", type=Path, nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--facility", default=None, help="the facility; checked against your token's, which decides")
    p.add_argument("--jobs", type=int, default=4, help="studies sent at once (default 4)")
    p.add_argument("--max-mbps", type=float, default=None, help="bandwidth cap in megabits per second")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="after sending, wait up to this long for ingest to accept or reject every study")
    _api_arguments(p)
    p.add_argument("--journal", type=Path, default=None, help="journal file (default: under CTFLEET_HOME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("status", help="the facility's worklist, or one study")
    p.add_argument("study_key", nargs="?", default=None)
    p.add_argument("--format", choices=("table", "json"), default="table")
    _api_arguments(p)


def _api_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, help="the API's base URL (default: CTFLEET_API_URL + /api)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding an access token (or CTFLEET_TOKEN)")


def client_from(args: argparse.Namespace, settings: Settings) -> ApiClient:
    token = os.environ.get("CTFLEET_TOKEN", "")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise BadInput(Reason.NO_TOKEN, f"cannot read --token-file {args.token_file}") from exc
    if not token:
        raise BadInput(Reason.NO_TOKEN, "give an access token: --token-file FILE or CTFLEET_TOKEN")
    api = args.api or (f"{settings.api_url.rstrip('/')}/api" if settings.api_url else None)
    if not api:
        raise BadInput(Reason.BAD_REQUEST, "give the API's URL: --api URL or CTFLEET_API_URL")
    return ApiClient(api, token=token)


def _journal(args: argparse.Namespace, settings: Settings, root: Path, *, new_run: bool) -> Journal:
    path = args.journal or journal_path(Path(settings.home).expanduser(), root)
    if not new_run and not path.exists():
        raise BadInput(Reason.NO_INPUT, f"no backfill of {root} on record here (journal {path})")
    return Journal(path, new_run=new_run)


def command(args: argparse.Namespace, settings: Settings) -> int:
    if str(args.dir) == "status":
        if args.status_dir is None:
            raise BadInput(Reason.NO_INPUT, "usage: ctfleet backfill status DIR")
        return status_of_backfill(args, settings, args.status_dir)
    root = args.dir
    if not root.is_dir():
        raise BadInput(Reason.NO_INPUT, f"{root} is not a folder")
    if args.jobs < 1:
        raise BadInput(Reason.BAD_REQUEST, "--jobs must be at least 1")
    client = client_from(args, settings)
    # A token that may not follow uploads (finance, expired), or of another facility than --facility,
    # stops here, before the scan.
    client.list_studies(args.facility)
    throttle = Throttle(args.max_mbps) if args.max_mbps else None
    started = time.monotonic()
    journal = _journal(args, settings, root, new_run=True)
    try:
        scan(journal, root, progress=not args.no_progress)
        scanned = time.monotonic()
        outcomes = send_all(journal, client, root, jobs=args.jobs, throttle=throttle, progress=not args.no_progress)
        sent = time.monotonic()
        if args.wait > 0:
            wait_for_ingest(journal, client, args.wait)
        summary = summarize(journal, outcomes, time.monotonic() - started)
        summary.update(scan_seconds=round(scanned - started, 3), send_seconds=round(sent - scanned, 3),
                       sent_bytes=sum(o.sent_bytes for o in outcomes))
        path = write_manifest(journal)
    finally:
        journal.close()
    _print_table(summary, file=sys.stderr)
    print(f"backfill: journal {journal.path}, manifest {path}", file=sys.stderr)
    print(json.dumps(summary, sort_keys=True))
    return 0


def scan(journal: Journal, root: Path, *, progress: bool) -> None:
    """Classify every file not classified before (same size and mtime), then group the studies."""
    batch = []
    with tqdm(desc="scan", unit=" files", disable=not progress, file=sys.stderr) as bar:
        for source in walk(root):
            bar.update(1)
            if journal.known(source):
                continue
            batch.append(classify(root, source))
            if len(batch) >= SCAN_BATCH:
                journal.record_files(batch)
                batch = []
        journal.record_files(batch)
    journal.mark_duplicates()
    journal.build_studies()


def send_all(journal: Journal, client: ApiClient, root: Path, *, jobs: int, throttle: Throttle | None,
             progress: bool) -> list[Outcome]:
    todo = journal.studies_to_send()
    total = sum(s.bytes for s in todo)
    with tqdm(total=total, desc="send", unit="B", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
        sender = Sender(client, journal, root, throttle=throttle, on_bytes=bar.update)
        with ThreadPoolExecutor(jobs, thread_name_prefix="backfill") as pool:
            outcomes = []
            for outcome in pool.map(sender.send, todo):
                outcomes.append(outcome)
                bar.set_postfix(studies=f"{len(outcomes)}/{len(todo)}", refresh=False)
    return outcomes


def wait_for_ingest(journal: Journal, client: ApiClient, timeout_s: float) -> None:
    """Refresh until no sent study's upload is still waiting for ingest (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = refresh(journal, client)
        waiting = counts.get(UploadStatus.RECEIVED, 0) + counts.get(UploadStatus.COMPLETE, 0)
        if not waiting or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def summarize(journal: Journal, outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """The run's figures: studies by outcome, files not sent by reason."""
    studies = journal.studies()
    sent_now = {o.study_uid for o in outcomes if o.state == State.COMPLETED}
    rejected = [s for s in studies if s["state"] == State.REJECTED or s["status"] == "REJECTED"]
    files = journal.counts()
    unreadable = Counter(f["reason"] for f in journal.problem_files())
    return {
        "studies": len(studies),
        "uploaded": len(sent_now),
        "skipped_duplicate": sum(1 for s in studies if s["state"] == State.COMPLETED and s["study_uid"] not in sent_now),
        "rejected": len(rejected),
        "failed": sum(1 for s in studies if s["state"] == State.FAILED or s["status"] == "FAILED"),
        "files_unreadable": files["unreadable"] + files["conflicting_files"],
        "files": files,
        "rejected_reasons": dict(Counter(str(s["reason"]) for s in rejected)),
        "unreadable_reasons": dict(unreadable),
        "resumed": sum(1 for o in outcomes if o.resumed),
        "seconds": round(seconds, 2),
    }


def _print_table(summary: dict[str, Any], *, file: Any) -> None:
    rows = [("studies found", summary["studies"]), ("  uploaded now", summary["uploaded"]),
            ("  sent before (skipped)", summary["skipped_duplicate"]), ("  rejected", summary["rejected"]),
            ("  failed", summary["failed"])]
    rows += [(f"    rejected: {r}", n) for r, n in sorted(summary["rejected_reasons"].items())]
    f = summary["files"]
    rows += [("files: images sent or on record", f["images"]), ("  duplicate copies (not sent)", f["duplicate_files"]),
             ("  DICOMDIR index files", f["index_files"]), ("  not sent, with a reason", summary["files_unreadable"])]
    rows += [(f"    {r}", n) for r, n in sorted(summary["unreadable_reasons"].items())]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{label:<{width}}  {value:>8}" for label, value in rows), file=file)


def status_of_backfill(args: argparse.Namespace, settings: Settings, root: Path) -> int:
    client = client_from(args, settings)
    journal = _journal(args, settings, root, new_run=False)
    try:
        counts = refresh(journal, client)
        path = write_manifest(journal, manifest_path(journal))
        studies = journal.studies(this_run=False)
    finally:
        journal.close()
    print(f"backfill status: {len(studies)} studies, manifest {path}", file=sys.stderr)
    print(json.dumps({"studies": len(studies), "by_status": counts}, sort_keys=True))
    return 0


STATUS_COLUMNS = ("study_key", "priority", "status", "reason", "triage_level", "score", "queued_at", "done_at")


def status(args: argparse.Namespace, settings: Settings) -> int:
    """``ctfleet status [STUDY_KEY]``: the worklist (newest first) or one study."""
    client = client_from(args, settings)
    rows = [client.get_study(args.study_key)] if args.study_key else client.list_studies()["studies"]
    if args.format == "json":
        print(json.dumps(rows[0] if args.study_key else {"studies": rows}, sort_keys=True, default=str))
        return 0
    cells = [[_cell(r.get(c), c) for c in STATUS_COLUMNS] for r in rows]
    print_columns(STATUS_COLUMNS, cells)
    return 0


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column.endswith("_at"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value)))
    if column == "score":
        return f"{float(value):.3f}"
    return str(value)


__all__ = ["add_arguments", "command", "status"]
