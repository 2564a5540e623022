"""Pure compute: a CT :class:`Volume` in, labels + report + overlays out (numpy and torch only).

``analyze`` is the built-in analyzer; :func:`get` returns any analyzer by name
(``"default"``) or local model path, loaded once per process and device.

Names are imported lazily (PEP 562): ``model.volume`` needs only numpy, so the
ingest function, which builds no volume on a GPU, never pays for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .volume import Volume, VolumeError

if TYPE_CHECKING:
    from .analysis import MEDIUM_THRESHOLD, MODEL_VERSION, ZONES, Analysis, analyze, score_from_involvement
    from .registry import Analyzer, BuiltinAnalyzer, ModelError, available, get, register

_LAZY = {
    **{name: ".analysis" for name in
       ("MEDIUM_THRESHOLD", "MODEL_VERSION", "ZONES", "Analysis", "analyze", "score_from_involvement")},
    **{name: ".registry" for name in ("Analyzer", "BuiltinAnalyzer", "ModelError", "available", "get", "register")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
