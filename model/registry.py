"""Analyzers by name: the built-in lung analyzer and any model a customer exports.

An *analyzer* is anything with a ``name``, a ``version`` and
``__call__(volume, device, *, high_threshold) -> Analysis``. The worker and
``ctfleet analyze`` ask :func:`get` for one at start-up and call it per study;
:func:`get` builds each analyzer once per process and device (weights are read
from disk and moved to the device once, then reused for every study).

Names resolve in this order:

1. a registered name (``"default"`` is the built-in :func:`model.analysis.analyze`);
2. a local path to an exported network (a ``.pt``/``.pt2`` file with a
   ``model.json`` beside it, a ``model.json``, or a folder holding one),
   see :mod:`model.exported`.

Anything else raises :class:`ModelError` ``unknown_model``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch

from .analysis import MODEL_VERSION, Analysis, analyze
from .device import resolve_device
from .volume import Volume

__all__ = [
    "Analyzer",
    "BuiltinAnalyzer",
    "ModelError",
    "available",
    "clear_cache",
    "get",
    "register",
]


class ModelError(ValueError):
    """A model that cannot be loaded or used: bad name, config, weights or output.

    ``reason`` is a short machine-readable code (``unknown_model``,
    ``bad_model_config``, ``bad_model_weights``, ``model_not_found``,
    ``bad_model_output``). This is a problem of the deployment, never of the
    study: callers must not record it as the study's bad input (catch it before
    the ``ValueError``-with-``reason`` branch that does).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@runtime_checkable
class Analyzer(Protocol):
    """What the worker and the CLI call.

    Attributes
    ----------
    name : str
        Registered name or the model's declared name.
    version : str
        Goes into ``report["model_version"]`` and the S3 result prefix; changes
        whenever the outputs could.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def __call__(self, volume: Volume, device: str | torch.device = "auto", *, high_threshold: float = 0.85) -> Analysis:
        """Analyze one CT ``volume`` (HU, ``(Z, Y, X)``) on ``device``; see :func:`model.analyze`."""
        ...


@dataclass(frozen=True)
class BuiltinAnalyzer:
    """The classical lung/lesion pipeline of :mod:`model.analysis` (no weights)."""

    name: str = "default"
    version: str = MODEL_VERSION

    def __call__(self, volume: Volume, device: str | torch.device = "auto", *, high_threshold: float = 0.85) -> Analysis:
        """Run :func:`model.analysis.analyze`; its report's ``model_version`` is :data:`MODEL_VERSION`."""
        return analyze(volume, device, high_threshold=high_threshold)


Factory = Callable[[torch.device], Analyzer]

_lock = threading.RLock()
_factories: dict[str, Factory] = {"default": lambda device: BuiltinAnalyzer()}
_cache: dict[tuple[object, ...], Analyzer] = {}


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Register an analyzer factory under ``name``.

    Parameters
    ----------
    name : str
        Lookup name (no path separators, so it cannot shadow a path).
    factory : callable
        ``factory(device: torch.device) -> Analyzer``; called at most once per
        device and process by :func:`get`, so it may load weights.
    replace : bool
        Allow replacing an existing registration (drops its cached instances).

    Raises
    ------
    ModelError
        ``bad_model_name`` for an empty name or one with a path separator, or an
        existing name without ``replace``.
    """
    if not name or "/" in name or os.sep in name:
        raise ModelError("bad_model_name", f"analyzer name {name!r} must be non-empty and contain no '/'")
    with _lock:
        if name in _factories and not replace:
            raise ModelError("bad_model_name", f"an analyzer named {name!r} is already registered")
        _factories[name] = factory
        for key in [k for k in _cache if k[0] == "name" and k[1] == name]:
            del _cache[key]


def available() -> list[str]:
    """Registered names, sorted."""
    with _lock:
        return sorted(_factories)


def clear_cache() -> None:
    """Forget every built analyzer (tests; a process normally keeps them for life)."""
    with _lock:
        _cache.clear()


def get(name_or_path: str | os.PathLike[str], device: str | torch.device = "auto") -> Analyzer:
    """The analyzer for a name or a local model path, built once per process and device.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A registered name (``"default"``), or a local path accepted by
        :func:`model.exported.loader.load`.
    device : str or torch.device
        Where weights live and inference runs (``"auto"``, ``"cpu"``, ``"cuda"``).
        Call the analyzer with the same device.

    Returns
    -------
    Analyzer

    Raises
    ------
    ModelError
        ``unknown_model`` when the name is neither registered nor an existing
        path; the loader's reasons (``bad_model_config``, ``bad_model_weights``)
        for a path.
    """
    dev = resolve_device(device)
    key_name = os.fspath(name_or_path)
    with _lock:
        factory = _factories.get(key_name) if isinstance(name_or_path, str) else None
        if factory is not None:
            key: tuple[object, ...] = ("name", key_name, str(dev))
            if key not in _cache:
                _cache[key] = factory(dev)
            return _cache[key]
        path = Path(key_name).expanduser()
        if not path.exists():
            raise ModelError("unknown_model", f"no analyzer named {key_name!r} and no such path; registered: {', '.join(available())}")
        # local: the default analyzer needs no torch.jit/export machinery
        from .exported.config import locate
        from .exported.loader import load

        config_path, weights_path = locate(path)
        st = weights_path.stat()
        cfg = config_path.stat()
        # The file identity is part of the key: a model replaced on disk is loaded anew.
        key = ("path", str(weights_path.resolve()), st.st_size, st.st_mtime_ns, cfg.st_size, cfg.st_mtime_ns, str(dev))
        if key not in _cache:
            _cache[key] = load(path, dev)
        return _cache[key]
