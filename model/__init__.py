"""Pure compute: a CT :class:`Volume` in, labels + report + overlays out (numpy and torch only)."""

from .analysis import MEDIUM_THRESHOLD, MODEL_VERSION, ZONES, Analysis, analyze, score_from_involvement
from .volume import Volume, VolumeError

__all__ = [
    "Analysis",
    "MEDIUM_THRESHOLD",
    "MODEL_VERSION",
    "Volume",
    "VolumeError",
    "ZONES",
    "analyze",
    "score_from_involvement",
]
