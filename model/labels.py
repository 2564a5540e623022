"""What the model's outputs mean: label values, triage levels and report flags, defined here once.

Pure Python (no torch): the kernel's contracts re-export these names, so the
handlers speak the same words without importing the model's compute.
"""

from __future__ import annotations


class Label:
    """Voxel values of the label map (``labels.nii.gz``, SEG segments)."""

    BACKGROUND = 0
    LUNG = 1
    GGO = 2  # ground-glass opacity
    CONSOLIDATION = 3


class TriageLevel:
    """A study's triage level, from its score."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    ALL = (LOW, MEDIUM, HIGH)


class Flag:
    """Entries of ``report["flags"]``: what an analyzer noticed about the study."""

    NOT_A_CHEST = "not_a_chest"  # no plausible lungs: no labels, score 0, level LOW
    ONE_LUNG_ONLY = "one_lung_only"  # one side has under a tenth of the other's lung volume
    PARTIAL_COVERAGE = "partial_coverage"  # the lungs run into the first or last slice: apices or bases not scanned
