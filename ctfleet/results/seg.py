"""The label map as a DICOM Segmentation (SEG) of the de-identified source series.

One BINARY Segmentation instance with three segments, referencing the source
series' instances (Referenced Series Sequence, per-frame Derivation Image
Sequence), sharing its Frame of Reference and copying the patient and study
modules from the already de-identified source, so it opens as an overlay on
the series in any PACS viewer and carries no PHI the source does not.

Segment codes (DICOM CID 7150 categories; property types from SNOMED CT and DCM):

==== ===================== ======================================== ==========================================
 #    label                 category                                 type
==== ===================== ======================================== ==========================================
 1    Lung                  SCT 123037004 "Anatomical Structure"     SCT 39607008 "Lung"
 2    Ground-glass opacity  SCT 49755003 "Morphologically Abnormal   DCM 112120 "Ground glass opacity"
                            Structure"                               (CID 6102/6104, chest CAD opacities)
 3    Consolidation         SCT 49755003 "Morphologically Abnormal   SCT 95436008 "Lung consolidation"
                            Structure"
==== ===================== ======================================== ==========================================

Each segment carries the algorithm identification (family DCM 123110 "Artificial
Intelligence", name ``ctfleet``, version = the model version). Only frames
(source slices) where a segment is present are stored (``omit_empty_frames``).
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from model.labels import Label

__all__ = ["SEGMENTS", "make_seg"]

_ANATOMY = hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure")
_ABNORMAL = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")

#: label value -> (segment label, category, property type, display colour CIELab from RGB)
SEGMENTS: dict[int, tuple[str, hd.sr.CodedConcept, hd.sr.CodedConcept, tuple[int, int, int]]] = {
    Label.LUNG: ("Lung", _ANATOMY, hd.sr.CodedConcept("39607008", "SCT", "Lung"), (128, 174, 128)),
    Label.GGO: ("Ground-glass opacity", _ABNORMAL, hd.sr.CodedConcept("112120", "DCM", "Ground glass opacity"), (241, 214, 145)),
    Label.CONSOLIDATION: ("Consolidation", _ABNORMAL, hd.sr.CodedConcept("95436008", "SCT", "Lung consolidation"), (216, 101, 79)),
}

SERIES_NUMBER = 9001  # well away from scanner series numbers
SERIES_DESCRIPTION = "ctfleet lung segmentation"


def _uid_from(*parts: str) -> str:
    # Deterministic UIDs: the same labels for the same series and model give the
    # same SEG, so re-running a job overwrites the result in place.
    return str(pydicom.uid.generate_uid(entropy_srcs=list(parts)))


def _along_normal(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    slices = list(datasets)
    if not slices or "ImageOrientationPatient" not in slices[0]:
        return slices
    iop = np.asarray([float(v) for v in slices[0].ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:6])
    try:
        along = np.asarray([float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal) for ds in slices])
    except (AttributeError, TypeError, ValueError):
        return slices
    return [slices[i] for i in np.argsort(along, kind="stable")]


def _checked(labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """The labels as uint8 and the sources along the normal, once they are known to match (else ``ValueError``)."""
    labels = np.asarray(labels)
    sources = _along_normal(source_datasets)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
    z, y, x = labels.shape
    if len(sources) != z:
        raise ValueError(f"{z} label slices but {len(sources)} source datasets")
    for ds in sources:
        if (int(ds.Rows), int(ds.Columns)) != (y, x):
            raise ValueError(f"source image size {(ds.Rows, ds.Columns)} differs from the labels' {(y, x)}")
    if len({ds.SeriesInstanceUID for ds in sources}) != 1 or len({ds.get("FrameOfReferenceUID") for ds in sources}) != 1:
        raise ValueError("source datasets must be one series in one frame of reference")
    if labels.size and int(labels.max()) > Label.CONSOLIDATION:
        raise ValueError("labels must be 0..3")
    return labels.astype(np.uint8, copy=False), sources


def _valid_source(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The source, or a copy the SEG can copy from without inheriting its faults: no
    SpacingBetweenSlices that is not a positive number (some scanners write it signed, along
    their table direction), and a FrameOfReferenceUID (Type 1) derived from the series UID
    when the source's is empty."""
    spacing_ok = True
    if "SpacingBetweenSlices" in ds:
        try:
            spacing = float(ds.SpacingBetweenSlices)
        except (TypeError, ValueError):
            spacing = float("nan")
        spacing_ok = bool(np.isfinite(spacing) and spacing > 0)
    frame_ok = bool(str(ds.get("FrameOfReferenceUID") or "").strip())
    if spacing_ok and frame_ok:
        return ds
    clean = copy.deepcopy(ds)
    if not spacing_ok:
        del clean.SpacingBetweenSlices
    if not frame_ok:
        clean.FrameOfReferenceUID = _uid_from("ctfleet-frame-of-reference", str(ds.SeriesInstanceUID))
    return clean


def _descriptions(model_version: str) -> list[hd.seg.SegmentDescription]:
    """One description per entry of :data:`SEGMENTS`, segment number = label value."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ctfleet", family=codes.cid7162.ArtificialIntelligence, version=model_version
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=SEGMENTS[v][0],
            segmented_property_category=SEGMENTS[v][1],
            segmented_property_type=SEGMENTS[v][2],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*SEGMENTS[v][3]),
        )
        for n, v in enumerate(SEGMENTS, start=1)
    ]


def make_seg(labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset], *, model_version: str) -> bytes:
    """Encode a label map as a DICOM SEG file referencing its source series.

    Parameters
    ----------
    labels : numpy.ndarray
        uint8 ``(Z, Y, X)``: 0 background, 1 lung, 2 ground-glass opacity,
        3 consolidation; ``labels[k]`` lies on the ``k``-th source slice along
        the normal (``Y`` = image rows, ``X`` = columns, as :func:`ctfleet.intake.volume.volume_from_series`
        builds the volume).
    source_datasets : sequence of pydicom.Dataset
        The de-identified single-frame source slices (pixel data not needed),
        in any order: they are sorted by ImagePositionPatient along the slice
        normal, stably, exactly as :func:`ctfleet.intake.volume.volume_from_series`
        orders the volume's ``Z`` axis.
    model_version : str
        Algorithm version recorded on every segment; part of the UID seed.

    Returns
    -------
    bytes
        A DICOM Part 10 Segmentation Storage file (Explicit VR Little Endian,
        BINARY, empty frames omitted) with segments 1 lung, 2 ground-glass
        opacity, 3 consolidation (segment number = label value), present or not.

    Raises
    ------
    ValueError
        Labels not ``(Z, Y, X)`` matching the sources' count, rows and columns,
        values above 3, or sources from different series or frames of reference.
    """
    labels, sources = _checked(labels, source_datasets)
    sources = [_valid_source(ds) for ds in sources]
    # Segment number == label value, always all three: readers that combine
    # segments get the ctfleet labels back, whatever a study happens to contain.
    # (frames, rows, cols, segments) bool: one channel per segment.
    masks = np.stack([labels == v for v in SEGMENTS], axis=-1)
    series_uid = str(sources[0].SeriesInstanceUID)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(model_version),
        series_instance_uid=_uid_from("ctfleet-seg-series", series_uid, model_version),
        series_number=SERIES_NUMBER,
        sop_instance_uid=_uid_from("ctfleet-seg-instance", series_uid, model_version, hashlib.sha256(labels.tobytes()).hexdigest()),
        instance_number=1,
        manufacturer="ctfleet",
        manufacturer_model_name="ctfleet",
        software_versions=model_version,
        device_serial_number="0",
        content_description="Lung, ground-glass opacity and consolidation",
        content_label="LUNG_LESIONS",
        series_description=SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=True,
    )
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
