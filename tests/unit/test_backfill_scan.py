"""The backfill's scan and journal on a messy archive, without a server: what each file is,
which copies are the same instance, which conflict, and what a second scan reads again."""

from __future__ import annotations

import shutil
import sqlite3
import zipfile

import pytest

from ctfleet.cli.backfill.journal import Journal, State
from ctfleet.cli.backfill.scan import Kind, classify, walk
from ctfleet.cli.backfill.sender import Throttle
from ctfleet.dev.archive import messy_archive
from ctfleet.errors import BadInput


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return messy_archive(tmp_path_factory.mktemp("a") / "export", 9)


def scan(journal: Journal, root) -> int:
    read = 0
    for source in walk(root):
        if not journal.known(source):
            journal.record_files([classify(root, source)])
            read += 1
    journal.mark_duplicates()
    journal.build_studies()
    return read


def test_every_file_is_classified_and_every_study_found_once(archive, tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    scan(journal, archive.root)
    studies = journal.studies()
    assert {s["study_uid"] for s in studies} == set(archive.studies)
    assert all(s["files"] == 16 and s["state"] == State.PENDING for s in studies)
    problems = {f["source"]: f["reason"] for f in journal.problem_files()}
    assert problems == archive.bad_files
    counts = journal.counts()
    assert counts["duplicate_files"] == archive.duplicate_files == 16 and counts["index_files"] == 1
    zipped = next(s for s in studies if s["folders"].startswith("zips/"))
    assert zipped["folders"] == "zips/batch0003.zip!STUDY3"
    assert oct((tmp_path / "j.sqlite").stat().st_mode & 0o777) == "0o600"


def test_a_second_scan_reads_only_what_changed_and_keeps_the_states(archive, tmp_path):
    path = tmp_path / "j.sqlite"
    first = Journal(path)
    total = scan(first, archive.root)
    uid = first.studies()[0]["study_uid"]
    first.created(uid, "a" * 32, [("00000.dcm", first.files_of(uid)[0]["source"])])
    first.close()
    again = Journal(path)
    assert scan(again, archive.root) == 0 and total > 100
    assert {s["study_uid"]: s["state"] for s in again.studies()}[uid] == State.CREATED
    assert len(again.studies_to_send()) == len(archive.studies)


def test_a_changed_study_is_sent_again_and_an_unchanged_completed_one_is_not(archive, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(archive.root, root)
    journal = Journal(tmp_path / "j.sqlite")
    scan(journal, root)
    for s in journal.studies():
        journal.settled(s["study_uid"], State.COMPLETED, status="QUEUED")
    journal.close()
    extra = next(root.glob("PAT00000/STUDY00000/IM0000.dcm"))
    shutil.copy(extra, extra.with_name("IM0100.dcm"))  # the same instance again: no change
    (root / "PAT00000/STUDY00000/IM0001.dcm").unlink()  # one slice less: the study changed
    journal = Journal(tmp_path / "j.sqlite")
    scan(journal, root)
    assert len(journal.studies_to_send()) == 1 and journal.studies_to_send()[0].files == 15


def test_unreadable_zips_and_members_are_reported(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04" + b"\0" * 50)
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    kinds = {s.name: classify(tmp_path, s) for s in walk(tmp_path)}
    assert kinds["ok.zip!notes.txt"].kind == Kind.UNREADABLE and kinds["ok.zip!notes.txt"].reason == "not_dicom"
    assert kinds["broken.zip"].kind == Kind.UNREADABLE


def test_the_journal_is_sqlite_a_hospital_can_open(archive, tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    scan(journal, archive.root)
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == len(archive.studies)


def test_the_throttle_paces_bytes_to_the_rate():
    t, slept = [0.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        t[0] += s

    throttle = Throttle(8.0, clock=lambda: t[0], sleep=sleep)  # 8 Mbit/s = 1 MB/s
    for _ in range(3):
        throttle.take(500_000)
    assert slept == pytest.approx([0.5, 0.5])
    with pytest.raises(BadInput):
        Throttle(0)
