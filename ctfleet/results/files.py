"""Serialise an :class:`model.Analysis` to the result files, and write them atomically.

The files are those of ``results/{facility}/{study}/{model_version}/`` and of
``ctfleet analyze --out DIR``: ``labels.nii.gz``, ``report.json``,
``overlay/<name>.png`` and, when the source DICOM slices are at hand,
``seg.dcm`` (a DICOM Segmentation of them, see :mod:`ctfleet.results.seg`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from PIL import Image

# Submodule imports: they work whether or not `model` resolves as a namespace package
# (an editable install made before model/__init__.py existed maps it as one).
from model.analysis import Analysis
from model.volume import Volume

if TYPE_CHECKING:
    import pydicom

__all__ = ["render", "write"]


def _nifti_gz(labels: np.ndarray, affine: np.ndarray) -> bytes:
    # nibabel's data array is (i, j, k) = (X, Y, Z), the transpose of ours.
    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0), dtype=np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    # mtime=0 keeps the bytes a function of the labels alone (idempotent uploads).
    # Level 3: a third of level 6's time for a label map of mostly zeros; size hardly matters here.
    return gzip.compress(raw, compresslevel=3, mtime=0)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def render(
    analysis: Analysis, volume: Volume, *, source_datasets: "Sequence[pydicom.Dataset] | None" = None
) -> dict[str, bytes]:
    """The result files of one analysis, in memory.

    Parameters
    ----------
    analysis : Analysis
        Output of an analyzer (:func:`model.analyze`, :func:`model.get`) for ``volume``.
    volume : Volume
        The analyzed volume; its affine goes into the NIfTI header.
    source_datasets : sequence of pydicom.Dataset, optional
        The de-identified slices the volume was built from, ordered like its
        ``Z`` axis (``Series.datasets`` as :func:`ctfleet.intake.volume.volume_from_series`
        sorts them; pixel data not needed). When given, ``"seg.dcm"`` is added.

    Returns
    -------
    dict of str to bytes
        ``"labels.nii.gz"`` (uint8, on the volume's grid, affine in RAS+ mm),
        ``"report.json"`` (indented, sorted keys), ``"overlay/<name>.png"`` and,
        with ``source_datasets``, ``"seg.dcm"`` (DICOM SEG; its algorithm version
        is ``report["model_version"]``).

    Raises
    ------
    ValueError
        If the labels are not on the volume's grid, or do not match the source
        slices (count, rows, columns).
    """
    if analysis.labels.shape != volume.shape:
        raise ValueError(f"labels {analysis.labels.shape} are not on the volume's grid {volume.shape}")
    files: dict[str, bytes] = {
        "labels.nii.gz": _nifti_gz(analysis.labels, volume.affine),
        "report.json": (json.dumps(analysis.report, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    }
    for name, rgb in sorted(analysis.overlays.items()):
        files[f"overlay/{name}.png"] = _png(rgb)
    if source_datasets is not None:
        from ctfleet.results.seg import make_seg  # local: highdicom is only needed when a SEG is asked for

        files["seg.dcm"] = make_seg(analysis.labels, list(source_datasets), model_version=str(analysis.report["model_version"]))
    return files


def write(files: dict[str, bytes], out_dir: Path) -> None:
    """Write ``files`` under ``out_dir``, all or nothing.

    Everything is written into a temporary directory beside ``out_dir`` (same
    file system, so the final rename is atomic) and then renamed into place;
    an existing ``out_dir`` is replaced only after the new one is complete.
    A failure leaves ``out_dir`` as it was and no temporary directory behind.

    Parameters
    ----------
    files : dict of str to bytes
        Relative path (``/``-separated, no ``..``) to content.
    out_dir : pathlib.Path
        The directory to create or replace.

    Raises
    ------
    ValueError
        For an absolute or escaping relative path.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        for rel, data in files.items():
            parts = rel.split("/")
            if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"unsafe relative path {rel!r}")
            path = tmp.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            old.rmdir()
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
