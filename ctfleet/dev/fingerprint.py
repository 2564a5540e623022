"""Digests of everything ctfleet writes for one study, through the CLI only.

``python -m ctfleet.dev.fingerprint DICOM_DIR > before.json``, change the code,
run it again and ``diff``: a refactor that claims to change nothing must give
the same file. It digests the label data, shape, dtype and affine, the report
without its timings and every overlay of ``ctfleet analyze``, and every file
``ctfleet deid`` writes (under a fixed secret). It runs the installed console
script's module (``python -m ctfleet``), so it compares whatever code is on
``sys.path``, whatever its layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

FIXED_SECRET = "ab" * 32  # only for comparing runs; never a facility's secret


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def analyze_digests(study: Path, work: Path) -> dict[str, Any]:
    """Digests of ``ctfleet analyze STUDY`` on the CPU."""
    out = work / "analyze"
    subprocess.run([sys.executable, "-m", "ctfleet", "analyze", str(study), "--out", str(out), "--device", "cpu"],
                   capture_output=True, check=True)
    img = nib.load(str(out / "labels.nii.gz"))
    assert isinstance(img, nib.Nifti1Image)
    labels = np.asarray(img.dataobj)
    report = json.loads((out / "report.json").read_text())
    report.pop("timings_s", None)
    return {"labels_data": sha256(labels.tobytes()), "labels_shape": list(labels.shape),
            "labels_dtype": str(labels.dtype), "affine": sha256(np.asarray(img.affine).tobytes()),
            "report_sans_timings": sha256(json.dumps(report, sort_keys=True).encode()),
            "label_counts": np.bincount(labels.ravel()).tolist(),
            "overlays": {p.name: sha256(p.read_bytes()) for p in sorted((out / "overlay").glob("*.png"))}}


def deid_digests(study: Path, work: Path) -> dict[str, Any]:
    """Digest of every file ``ctfleet deid STUDY`` writes under :data:`FIXED_SECRET`, with their names."""
    secret, out = work / "secret", work / "deid"
    secret.write_text(FIXED_SECRET)
    run = subprocess.run([sys.executable, "-m", "ctfleet", "deid", str(study), str(out), "--facility", "demo",
                          "--secret-file", str(secret)], capture_output=True, text=True, check=True)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"stdout": json.loads(run.stdout.strip().splitlines()[-1]), "files": len(files),
            "all": sha256(b"".join(str(p.relative_to(out)).encode() + p.read_bytes() for p in files))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctfleet.dev.fingerprint", description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, help="a folder of DICOM files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        (work / "d").mkdir()
        digests = {"real_ct": analyze_digests(args.study, work / "a"), "deid": deid_digests(args.study, work / "d")}
    print(json.dumps(digests, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
