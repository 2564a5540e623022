"""Every reason code, in one namespace. Stable: clients, dashboards and tests match on them.

A reason says why an upload or a study ended REJECTED or FAILED (or why a
command refused its input); it never carries a header value.
"""

from __future__ import annotations


class Reason:
    """Reason codes recorded with REJECTED and FAILED. Stable: clients match on them."""

    EMPTY_UPLOAD = "empty_upload"
    MANIFEST_INVALID = "manifest_invalid"
    UPLOAD_INCOMPLETE = "upload_incomplete"  # never completed, or files missing at completion
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a file's sha256 differs from the manifest
    NOT_DICOM = "not_dicom"
    NO_PIXEL_DATA = "no_pixel_data"
    NOT_CT = "not_ct"
    MULTIPLE_STUDIES = "multiple_studies"
    NO_USABLE_SERIES = "no_usable_series"
    UNKNOWN_FACILITY = "unknown_facility"
    # Geometry and pixel checks while building the volume.
    INCONSISTENT_SPACING = "inconsistent_spacing"  # slice gaps differ (a missing slice, mixed stacks)
    DUPLICATE_SLICES = "duplicate_slices"  # two instances at the same position along the normal
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # orientation, size or pixel spacing differ
    MISSING_GEOMETRY = "missing_geometry"  # position, orientation or pixel spacing absent
    UNSUPPORTED_PIXEL_DATA = "unsupported_pixel_data"  # multi-frame, colour, undecodable syntax
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # a syntax no installed decoder reads
    # Pixel safety: images that may show identity in their pixels.
    BURNED_IN_ANNOTATION = "burned_in_annotation"  # the header says so (BurnedInAnnotation YES)
    SECONDARY_CAPTURE = "secondary_capture"  # screenshots and other converted images
    DERIVED_IMAGE = "derived_image"  # screen saves and other derived pictures, not reconstructions
    BURNED_IN_TEXT = "burned_in_text"  # text found in the pixels although the header is silent
    OUTPUT_EXISTS = "output_exists"  # a command's output folder is not empty
    ANALYSIS_FAILED = "analysis_failed"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
