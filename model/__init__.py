"""Pure compute: a CT :class:`Volume` in, labels + report + overlays out (numpy and torch only).

``analyze`` is the built-in analyzer; :func:`get` returns any analyzer by name
(``"default"``) or local model path, loaded once per process and device.

Names are imported lazily (PEP 562): ``model.volume`` and ``model.labels`` need
only numpy or nothing, so the ingest function, which builds no volume on a GPU,
never pays for importing torch.

Modules, by concept: :mod:`.volume` (the input), :mod:`.labels` (what outputs
mean), :mod:`.device`, :mod:`.params`, :mod:`.orientation`, :mod:`.grid`,
:mod:`.morphology`, :mod:`.lungs`, :mod:`.lesions`, :mod:`.report`,
:mod:`.overlay`, :mod:`.timing`, :mod:`.analysis` (the built-in analyzer),
:mod:`.exported` (customers' networks) and :mod:`.registry` (analyzers by name).
Everything here imports only numpy, torch, the standard library and ``model``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .volume import Volume, VolumeError

if TYPE_CHECKING:
    from .analysis import MODEL_VERSION, Analysis, analyze
    from .registry import Analyzer, BuiltinAnalyzer, ModelError, available, get, register
    from .report import MEDIUM_THRESHOLD, ZONES, score_from_involvement

_LAZY = {
    **{name: ".analysis" for name in ("MODEL_VERSION", "Analysis", "analyze")},
    **{name: ".registry" for name in ("Analyzer", "BuiltinAnalyzer", "ModelError", "available", "get", "register")},
    **{name: ".report" for name in ("MEDIUM_THRESHOLD", "ZONES", "score_from_involvement")},
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
