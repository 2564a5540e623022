"""Pure compute: a CT :class:`Volume` in, labels + report + overlays out (numpy and torch only).

``analyze`` is the built-in analyzer; :func:`get` returns any analyzer by name
(``"default"``) or local model path, loaded once per process and device.
"""

from .analysis import MEDIUM_THRESHOLD, MODEL_VERSION, ZONES, Analysis, analyze, score_from_involvement
from .registry import Analyzer, BuiltinAnalyzer, ModelError, available, get, register
from .volume import Volume, VolumeError

__all__ = [
    "Analysis",
    "Analyzer",
    "BuiltinAnalyzer",
    "MEDIUM_THRESHOLD",
    "MODEL_VERSION",
    "ModelError",
    "Volume",
    "VolumeError",
    "ZONES",
    "analyze",
    "available",
    "get",
    "register",
    "score_from_involvement",
]
