"""``ctfleet demo``: synthetic chest studies (and any folders given) from upload to alert, locally.

Nothing is downloaded: the phantoms are generated here, written as DICOM with
made-up identities (so de-identification has something to remove), uploaded
through the API and presigned POSTs exactly as the browser does, and followed
to their final state. The last stdout line is the JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from ctfleet.settings import Settings

# Made-up identities: the demo's PHI, which must never appear past ingest.
_DEMO_PATIENTS = {
    "high": ("PHANTOM^OPACITIES", "DEMO-0001"),
    "clean": ("PHANTOM^CLEAN", "DEMO-0002"),
}


@dataclass
class DemoStudy:
    label: str
    files: list[tuple[str, bytes]]
    expect: str | None = None  # expected triage level, for the phantoms


def phantom_studies() -> list[DemoStudy]:
    """The bundled synthetic studies: one that must triage HIGH and one clean (LOW)."""
    from ctfleet.dev import phantom
    from ctfleet.dev.synthetic import series_to_datasets
    from ctfleet.intake import dataset_to_bytes

    studies = []
    for label, expect in (("high", "HIGH"), ("clean", "LOW")):
        p = phantom.from_preset(label)
        name, pid = _DEMO_PATIENTS[label]
        datasets = series_to_datasets(p.hu, p.spacing_mm, patient_name=name, patient_id=pid,
                                      study_date="20260101")
        files = [(f"{label}/IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]
        studies.append(DemoStudy(label=f"phantom-{label}", files=files, expect=expect))
    return studies


def folder_study(folder: Path) -> DemoStudy:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return DemoStudy(label=folder.name,
                     files=[(p.relative_to(folder).as_posix(), p.read_bytes()) for p in files])


DEMO_IDLE_GRACE_S = 10.0  # the demo waits this long after the last work for the fleet to return to zero
DEMO_BOOT_S = 5.0


def run_demo(settings: Settings, folders: list[Path], *, fleet_max: int = 2, timeout_s: float = 240.0,
             err: IO[str] = sys.stderr, worker_log: Path | None = None) -> dict[str, Any]:
    """Start the local stack with a fleet at zero, push every study through it, wait for the fleet
    to return to zero, stop; returns the summary."""
    from ctfleet.cli.client import ApiClient
    from ctfleet.local.stack import LocalStack

    started = time.monotonic()
    studies = phantom_studies() + [folder_study(f) for f in folders]
    facility = settings.facilities[0]
    settings = replace(settings, fleet_idle_grace_s=DEMO_IDLE_GRACE_S)
    print(f"demo: starting the local stack with a fleet of 0..{fleet_max} ({DEMO_BOOT_S:g} s boot)", file=err)
    with LocalStack(settings, fleet_max=fleet_max, boot_s=DEMO_BOOT_S, worker_log=worker_log) as stack:
        watch = FleetWatch(stack, err)
        api = ApiClient(stack.api_url + "/api", token=stack.token(facility, "clinician"))
        pending: dict[str, tuple[DemoStudy, float]] = {}
        for study in studies:
            up = api.upload(facility, study.files)
            pending[up.upload_id] = (study, time.monotonic())
            print(f"demo: uploaded {study.label}: {up.files} files, {up.size_bytes / 1e6:.1f} MB", file=err)
        outcomes, first_result_s = _follow(api, pending, watch, timeout_s, err)
        highs = sum(1 for s in outcomes.values() if (s["study"] or {}).get("triage_level") == "HIGH")
        alerts = collect_alerts(stack, expected=highs)
        watch.wait_for_zero(DEMO_IDLE_GRACE_S + stack.scaler_interval_s + 30.0)
    summary = summarize(studies, outcomes, alerts, lost=len(pending), seconds=time.monotonic() - started)
    summary.update(fleet_peak=watch.peak, fleet_end=watch.size, first_result_s=first_result_s)
    for study, _ in pending.values():
        print(f"demo: LOST {study.label}: no final state within {timeout_s:.0f} s", file=err)
    return summary


class FleetWatch:
    """Prints the fleet's size as it changes, and keeps its peak."""

    def __init__(self, stack: Any, err: IO[str]) -> None:
        self.stack, self.err = stack, err
        self.size = self.peak = 0

    def poll(self) -> int:
        size = self.stack.fleet.size
        if size != self.size:
            print(f"demo: fleet {size} instance(s)", file=self.err)
        self.size, self.peak = size, max(self.peak, size)
        return size

    def wait_for_zero(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.poll() and time.monotonic() < deadline:
            time.sleep(0.5)


def _follow(api: Any, pending: dict[str, tuple[DemoStudy, float]], watch: FleetWatch, timeout_s: float,
            err: IO[str]) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Poll until every upload is final (or the timeout); the outcomes, and upload-to-DONE of the first study."""
    outcomes: dict[str, dict[str, Any]] = {}
    first_result_s: float | None = None
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        watch.poll()
        for upload_id, (study, sent_at) in list(pending.items()):
            state = api.wait(upload_id, timeout_s=0.0)
            if state["final"]:
                outcomes[upload_id] = state
                del pending[upload_id]
                if first_result_s is None and (state["study"] or {}).get("status") == "DONE":
                    first_result_s = round(time.monotonic() - sent_at, 1)
                print("demo: " + describe(study, state), file=err)
        time.sleep(0.5)
    return outcomes, first_result_s


def collect_alerts(stack: Any, *, expected: int, settle_s: float = 3.0, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Alerts delivered to the local inbox: wait for the expected ones, then a little more for extras."""
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        new = stack.drain_alerts(wait_s=1)
        alerts.extend(new)
        if new:
            quiet_since = time.monotonic()
        elif len(alerts) >= expected and time.monotonic() - quiet_since >= settle_s:
            break
    return alerts


def describe(study: DemoStudy, state: dict[str, Any]) -> str:
    upload, record = state["upload"], state["study"]
    if record is None:
        return f"{study.label}: {upload['status']} ({upload.get('reason', '-')})"
    if record["status"] != "DONE":
        return f"{study.label}: {record['status']} ({record.get('reason', '-')})"
    t = record.get("timings_s", {})
    stages = " ".join(f"{k.split('_', 1)[1]}={v:.2f}s" for k, v in sorted(t.items())
                      if k.startswith(("ingest_", "worker_")))
    check = ""
    if study.expect:
        check = " ok" if record.get("triage_level") == study.expect else f" UNEXPECTED (wanted {study.expect})"
    return (f"{study.label}: DONE study={record['study_key']} score={record.get('score'):.3f} "
            f"severity={record.get('severity_score')} triage={record.get('triage_level')}{check} "
            f"cost=${record.get('cost_usd', 0):.3g} [{stages}]")


def summarize(studies: list[DemoStudy], outcomes: dict[str, dict[str, Any]], alerts: list[dict[str, Any]],
              *, lost: int, seconds: float) -> dict[str, Any]:
    def final_status(state: dict[str, Any]) -> str:
        return str((state["study"] or state["upload"])["status"])

    statuses = [final_status(s) for s in outcomes.values()]
    return {
        "studies": len(studies),
        "done": statuses.count("DONE"),
        "rejected": statuses.count("REJECTED"),
        "failed": statuses.count("FAILED"),
        "alerts": len(alerts),
        "lost": lost,
        "seconds": round(seconds, 1),
    }


def main(settings: Settings, folders: list[Path], *, fleet_max: int = 2, timeout_s: float = 240.0) -> int:
    summary = run_demo(settings, folders, fleet_max=fleet_max, timeout_s=timeout_s)
    print(json.dumps(summary))
    return 1 if summary["lost"] or summary["failed"] else 0
