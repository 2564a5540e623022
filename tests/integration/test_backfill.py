"""Hospital IT's door: ``ctfleet backfill`` on a messy archive against the local stack, killed
with SIGKILL midway and run again; every study uploaded once and processed once, every bad
file accounted for. ``CTFLEET_BACKFILL_STUDIES`` sizes the archive (``make soak-backfill``: 200).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ctfleet.aws.records import Table
from ctfleet.cli.client import ApiClient
from ctfleet.dev.archive import messy_archive
from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDIES = int(os.environ.get("CTFLEET_BACKFILL_STUDIES", "10"))
# The local stack's moto serves every request in one process: 200 studies take it about 20 minutes.
BUDGET_S = 300 + 10 * STUDIES


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    settings = Settings(stack="ctfbackfill", facilities=("north", "south"))
    with LocalStack(settings, workers=1, worker_log=tmp_path_factory.mktemp("backfill") / "workers.log") as s:
        yield s


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return messy_archive(tmp_path_factory.mktemp("archive") / "export", STUDIES)


def backfill(stack: LocalStack, home: Path, *args: str, token: str | None = None, **popen) -> subprocess.Popen[str]:
    env = {**os.environ, "CTFLEET_HOME": str(home), "CTFLEET_TOKEN": token or stack.token("north", "it")}
    return subprocess.Popen([sys.executable, "-m", "ctfleet", "backfill", *args, "--api", stack.api_url + "/api",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **popen)


def finish(proc: subprocess.Popen[str], timeout_s: float = BUDGET_S) -> dict:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]) | {"_stderr": err}


def journal_of(home: Path) -> Path:
    found = list((home / "backfill").glob("*/journal.sqlite"))
    assert len(found) == 1
    return found[0]


def completed_in(journal: Path) -> int:
    try:
        with sqlite3.connect(journal) as db:
            return int(db.execute("SELECT COUNT(*) FROM studies WHERE state = 'completed'").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def runs(stack, archive, tmp_path_factory):
    """First run killed with SIGKILL once a few studies are in, second run to the end, third run again."""
    home = tmp_path_factory.mktemp("home")
    first = backfill(stack, home, str(archive.root), "--jobs", "2", "--max-mbps", "8")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((home / "backfill").exists() and list((home / "backfill").glob("*/journal.sqlite"))
                                               and completed_in(journal_of(home)) >= max(2, STUDIES // 6)):
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_with = completed_in(journal_of(home))
    second = finish(backfill(stack, home, str(archive.root), "--jobs", "3", "--wait", str(BUDGET_S)))
    third = finish(backfill(stack, home, str(archive.root)))
    return {"home": home, "killed_with": killed_with, "second": second, "third": third}


def test_a_killed_backfill_resumes_and_sends_every_study_once(stack, archive, runs):
    second, killed_with = runs["second"], runs["killed_with"]
    assert 0 < killed_with < STUDIES, "the first run was killed midway"
    assert second["studies"] == STUDIES
    assert second["uploaded"] + second["skipped_duplicate"] == STUDIES
    assert second["skipped_duplicate"] >= killed_with and second["failed"] == 0 and second["rejected"] == 0
    # Server side: one completed upload per study, whatever was killed where.
    uploads = list(Table(stack.clients.dynamodb, stack.settings.uploads_table).scan())
    completed = [u for u in uploads if u.get("completed_at")]
    assert len(completed) == STUDIES
    assert len({u["study_key"] for u in completed if u.get("study_key")}) == STUDIES
    open_left = [u for u in uploads if not u.get("completed_at")]
    assert len(open_left) <= 2, "at most the uploads in flight when the first run was killed are left open"


def test_every_study_is_processed_once(stack, runs):
    client = ApiClient(stack.api_url + "/api", token=stack.token("north", "it"))
    deadline = time.monotonic() + BUDGET_S
    while time.monotonic() < deadline:
        studies = client.list_studies()["studies"]
        if len(studies) == STUDIES and all(s["status"] in ("DONE", "REJECTED", "FAILED") for s in studies):
            break
        time.sleep(2)
    assert len(studies) == STUDIES and {s["status"] for s in studies} == {"DONE"}
    assert all(s["attempts"] == 1 for s in studies)
    assert all(s["triage_level"] in ("LOW", "MEDIUM", "HIGH") for s in studies), "IT sees the triage level"
    env = {**os.environ, "CTFLEET_TOKEN": stack.token("north", "it")}
    listed = subprocess.run([sys.executable, "-m", "ctfleet", "status", "--format", "json", "--api",
                             stack.api_url + "/api"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["studies"]) == STUDIES
    key = studies[0]["study_key"]
    one = subprocess.run([sys.executable, "-m", "ctfleet", "status", key, "--api", stack.api_url + "/api"],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0 and key in one.stdout and "DONE" in one.stdout and "triage_level" in one.stdout


def test_a_third_run_sends_nothing(runs):
    third = runs["third"]
    assert third["uploaded"] == 0 and third["skipped_duplicate"] == STUDIES


def test_every_bad_file_is_in_the_json_the_table_and_the_manifest(stack, archive, runs):
    second = runs["second"]
    assert second["files_unreadable"] == len(archive.bad_files)
    assert second["unreadable_reasons"] == dict(Counter(archive.bad_files.values()))
    assert second["files"]["duplicate_files"] == archive.duplicate_files
    assert second["files"]["index_files"] == archive.index_files
    assert "duplicate_sop_conflict" in second["_stderr"] and "not sent, with a reason" in second["_stderr"]
    status = subprocess.run([sys.executable, "-m", "ctfleet", "backfill", "status", str(archive.root), "--api",
                             stack.api_url + "/api"], capture_output=True, text=True,
                            env={**os.environ, "CTFLEET_HOME": str(runs["home"]),
                                 "CTFLEET_TOKEN": stack.token("north", "it")})
    assert status.returncode == 0, status.stderr
    manifest = journal_of(runs["home"]).parent / "manifest.csv"
    assert oct(manifest.stat().st_mode & 0o777) == "0o600"
    rows = list(csv.DictReader(manifest.open()))
    studies = {r["study_instance_uid"]: r for r in rows if r["kind"] == "study"}
    assert set(studies) == set(archive.studies)
    for uid, expected in archive.studies.items():
        row = studies[uid]
        assert (row["patient_id"], row["patient_name"], row["accession_number"]) == (
            expected["patient_id"], expected["patient_name"], expected["accession"])
        assert row["study_key"] and row["upload_id"] and row["state"] == "completed"
    assert {r["folder"]: r["reason"] for r in rows if r["kind"] == "file"} == archive.bad_files
    split = next(r for r in studies.values() if r["folder"].startswith("split/"))
    assert split["folder"] == "split/part1;split/part2" and int(split["files"]) == 16


def test_nothing_of_the_hospital_reaches_the_server_records(stack, archive, runs):
    """The manifest maps back to patients; the server never saw a name or MRN outside raw/."""
    records = list(Table(stack.clients.dynamodb, stack.settings.studies_table).scan())
    text = json.dumps(records, default=str)
    for expected in archive.studies.values():
        assert expected["patient_id"] not in text and expected["accession"] not in text


def test_backfill_needs_the_it_role_and_refuses_a_folder_that_is_not_one(stack, tmp_path):
    finance = backfill(stack, tmp_path, str(tmp_path), token=stack.token("north", "finance"))
    out, err = finance.communicate(timeout=120)
    assert finance.returncode == 2 and "role_not_allowed" in err
    missing = backfill(stack, tmp_path, str(tmp_path / "nope"))
    out, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "no_input" in err
    elsewhere = backfill(stack, tmp_path, str(tmp_path), "--facility", "south")
    out, err = elsewhere.communicate(timeout=120)
    assert elsewhere.returncode == 2 and "facility_mismatch" in err


def test_finance_reads_the_backfill_s_cost_through_the_api_and_an_operator_from_the_tables(stack, runs, tmp_path):
    from PIL import Image

    month = time.strftime("%Y-%m", time.gmtime())
    env = {**os.environ, "CTFLEET_TOKEN": stack.token("north", "finance")}
    base = [sys.executable, "-m", "ctfleet", "cost", "--month", month, "--api", stack.api_url + "/api"]
    chart = tmp_path / "cost.png"
    out = subprocess.run(base + ["--by", "facility", "--format", "json", "--plot", str(chart)], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["facility"] for r in figures["rows"]] == ["north"] and figures["rows"][0]["studies"] == STUDIES
    assert float(figures["total_loaded_usd"]) > 0 and "fleet_usd" not in figures
    with Image.open(chart) as png:
        assert png.format == "PNG" and png.size[0] >= 600
    table = subprocess.run(base + ["--by", "day"], capture_output=True, text=True, env=env)
    assert table.returncode == 0 and "loaded_usd" in table.stdout and "USD fully loaded" in table.stdout
    # The operator's view: every facility, and the ledger's total beside what the studies carry.
    direct = subprocess.run([sys.executable, "-m", "ctfleet", "cost", "--month", month, "--direct", "--format", "json"],
                            capture_output=True, text=True, env={**os.environ, **stack.settings.to_env()})
    assert direct.returncode == 0, direct.stderr
    whole = json.loads(direct.stdout.strip().splitlines()[-1])
    assert whole["instances"] >= 1
    carried = sum(float(r["loaded_usd"]) for r in whole["rows"]) + float(whole["unallocated_usd"])
    assert carried == pytest.approx(float(whole["fleet_usd"]), abs=1e-8)
    clinician = subprocess.run(base, capture_output=True, text=True,
                               env={**os.environ, "CTFLEET_TOKEN": stack.token("north", "clinician")})
    assert clinician.returncode == 2 and "role_not_allowed" in clinician.stderr
