"""``model.json``: its schema (:class:`ModelConfig`), its parser, and where a model's files are."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..labels import Label
from ..registry import ModelError

__all__ = ["CONFIG_NAME", "LABEL_OF_CLASS", "WEIGHT_SUFFIXES", "ModelConfig", "locate", "parse_config", "read_config"]

CONFIG_NAME = "model.json"
WEIGHT_SUFFIXES = (".pt", ".pt2", ".ts", ".pth")
LABEL_OF_CLASS = {
    "background": Label.BACKGROUND,
    "lung": Label.LUNG,
    "ggo": Label.GGO,
    "ground_glass_opacity": Label.GGO,
    "consolidation": Label.CONSOLIDATION,
}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # names go into S3 result prefixes


@dataclass(frozen=True)
class ModelConfig:
    """``model.json``, parsed and checked (valid once built).

    Attributes
    ----------
    format : {"torchscript", "export"}
    name, version : str
        ``[A-Za-z0-9._-]``, at most 64 characters.
    weights : str or None
        File name of the weights beside ``model.json``.
    spacing_mm : tuple of float or None
        ``(z, y, x)`` grid the network expects; ``None`` keeps the input grid.
    hu_window : tuple of float
        ``(lo, hi)`` clip range in HU.
    normalize : {"minmax", "zscore", "none"}
    mean, std : float or None
        Fixed z-score statistics (HU, after clipping); ``None`` uses the volume's own.
    patch : tuple of int or None
        Sliding-window size ``(z, y, x)`` on the network's grid; ``None`` is whole volume.
    overlap : float
        Fraction of a window shared with the next.
    batch : int
        Windows per forward call.
    output_kind : {"logits", "probabilities"}
    class_labels : tuple of int
        ctfleet label of output channel ``c``.
    amp : bool
        float16 autocast on CUDA.
    """

    format: str
    name: str
    version: str
    weights: str | None
    spacing_mm: tuple[float, float, float] | None
    hu_window: tuple[float, float]
    normalize: str
    mean: float | None
    std: float | None
    patch: tuple[int, int, int] | None
    overlap: float
    batch: int
    output_kind: str
    class_labels: tuple[int, ...]
    amp: bool


def _bad(message: str) -> ModelError:
    return ModelError("bad_model_config", message)


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise _bad(f"{what} must be a list of {n} numbers, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _bad(f"{what} must be a list of {n} numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out) or any(isinstance(v, bool) for v in value):
        raise _bad(f"{what} must be finite numbers, got {value!r}")
    return out


def _identity(data: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """``format``, ``name``, ``version`` and ``weights``, checked."""
    fmt = data.get("format")
    if fmt not in ("torchscript", "export"):
        raise _bad(f"format must be 'torchscript' or 'export', got {fmt!r}")
    name, version = data.get("name"), data.get("version")
    for key, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not _SAFE.match(value):
            raise _bad(f"{key} must be 1-64 characters of [A-Za-z0-9._-], got {value!r}")
    weights = data.get("weights")
    if weights is not None and (not isinstance(weights, str) or "/" in weights or "\\" in weights or weights in ("", ".", "..")):
        raise _bad(f"weights must be a plain file name beside model.json, got {weights!r}")
    return str(fmt), str(name), str(version), weights


def _intensity(inp: dict[str, Any]) -> dict[str, Any]:
    """``spacing_mm``, ``hu_window``, ``normalize``, ``mean`` and ``std`` of ``input``, checked."""
    spacing = None
    if inp.get("spacing_mm") is not None:
        spacing = _floats(inp["spacing_mm"], 3, "input.spacing_mm")
        if min(spacing) <= 0:
            raise _bad(f"input.spacing_mm must be positive, got {inp['spacing_mm']!r}")
    if "hu_window" not in inp:
        raise _bad("input.hu_window is required")
    lo, hi = _floats(inp["hu_window"], 2, "input.hu_window")
    if not lo < hi:
        raise _bad(f"input.hu_window must be [lo, hi] with lo < hi, got {inp['hu_window']!r}")
    normalize = inp.get("normalize", "minmax")
    if normalize not in ("minmax", "zscore", "none"):
        raise _bad(f"input.normalize must be 'minmax', 'zscore' or 'none', got {normalize!r}")
    mean = std = None
    if normalize == "zscore" and ("mean" in inp or "std" in inp):
        mean, std = _floats([inp.get("mean"), inp.get("std")], 2, "input.mean/std")
        if std <= 0:
            raise _bad("input.std must be positive")
    return {"spacing_mm": spacing, "hu_window": (lo, hi), "normalize": normalize, "mean": mean, "std": std}


def _window(inp: dict[str, Any]) -> dict[str, Any]:
    """``patch``, ``overlap`` and ``batch`` of ``input`` (the sliding window), checked."""
    patch = None
    if inp.get("patch") is not None:
        p = inp["patch"]
        if not isinstance(p, (list, tuple)) or len(p) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p):
            raise _bad(f"input.patch must be three positive integers, got {p!r}")
        patch = (int(p[0]), int(p[1]), int(p[2]))
    overlap = inp.get("overlap", 0.5)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) <= 0.9:
        raise _bad(f"input.overlap must be a number in [0, 0.9], got {overlap!r}")
    batch = inp.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 64:
        raise _bad(f"input.batch must be an integer in [1, 64], got {batch!r}")
    return {"patch": patch, "overlap": float(overlap), "batch": batch}


def _class_labels(classes: Any) -> tuple[int, ...]:
    """The ctfleet label of each output channel, from ``output.classes``."""
    if not isinstance(classes, dict) or not classes:
        raise _bad("output.classes must be an object of channel index to class name")
    try:
        indices = sorted(int(k) for k in classes)
    except (TypeError, ValueError):
        raise _bad(f"output.classes keys must be channel indices, got {sorted(classes)!r}") from None
    if indices != list(range(len(classes))):
        raise _bad(f"output.classes keys must be 0..{len(classes) - 1}, got {sorted(classes)!r}")
    names = [classes[str(i)] if str(i) in classes else None for i in indices]
    unknown = [n for n in names if n not in LABEL_OF_CLASS]
    if unknown:
        raise _bad(f"output.classes names must be among {sorted(LABEL_OF_CLASS)}, got {unknown!r}")
    labels = tuple(LABEL_OF_CLASS[str(n)] for n in names)
    if Label.LUNG not in labels:
        raise _bad("output.classes must include 'lung' (involvement is measured against it)")
    if len(labels) < 2:
        raise _bad("output.classes needs at least two classes")
    return labels


def _output(out: Any) -> dict[str, Any]:
    """``output.kind`` and the channels' labels, checked."""
    if not isinstance(out, dict):
        raise _bad("output must be an object")
    kind = out.get("kind")
    if kind not in ("logits", "probabilities"):
        raise _bad(f"output.kind must be 'logits' or 'probabilities', got {kind!r}")
    return {"output_kind": kind, "class_labels": _class_labels(out.get("classes"))}


def parse_config(data: Any) -> ModelConfig:
    """Check a decoded ``model.json`` and build a :class:`ModelConfig`.

    Parameters
    ----------
    data : object
        The decoded JSON document.

    Returns
    -------
    ModelConfig

    Raises
    ------
    ModelError
        ``bad_model_config`` naming the first field that is missing or wrong.
    """
    if not isinstance(data, dict):
        raise _bad("model.json must hold a JSON object")
    fmt, name, version, weights = _identity(data)
    inp = data.get("input")
    if not isinstance(inp, dict):
        raise _bad("input must be an object")
    fields = {**_intensity(inp), **_window(inp), **_output(data.get("output"))}
    amp = data.get("amp", True)
    if not isinstance(amp, bool):
        raise _bad(f"amp must be true or false, got {amp!r}")
    return ModelConfig(format=fmt, name=name, version=version, weights=weights, amp=amp, **fields)


def read_config(path: Path) -> ModelConfig:
    """Read ``model.json`` and return its :func:`parse_config`.

    Parameters
    ----------
    path : pathlib.Path
        The ``model.json`` file.

    Raises
    ------
    ModelError
        ``bad_model_config`` for an unreadable file or invalid JSON, or as :func:`parse_config`.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"cannot read {Path(path).name}: {exc}") from exc
    return parse_config(data)


def locate(path: str | Path) -> tuple[Path, Path]:
    """Find ``model.json`` and the weights for a local model path.

    Parameters
    ----------
    path : str or pathlib.Path
        A folder holding ``model.json``; ``model.json`` itself; or a weights
        file with ``model.json`` beside it.

    Returns
    -------
    tuple of pathlib.Path
        ``(config_path, weights_path)``, both existing files.

    Raises
    ------
    ModelError
        ``model_not_found`` when a file is missing; ``bad_model_config`` when the
        weights are ambiguous.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, None
    elif path.suffix == ".json":
        config_path, weights_path = path, None
    else:
        config_path, weights_path = path.parent / CONFIG_NAME, path
    if not config_path.is_file():
        raise ModelError("model_not_found", f"no {CONFIG_NAME} at {config_path}")
    cfg = read_config(config_path)
    if cfg.weights is not None:
        declared = config_path.parent / cfg.weights
        if weights_path is not None and weights_path.resolve() != declared.resolve():
            raise _bad(f"{CONFIG_NAME} names weights {cfg.weights!r}, not {weights_path.name!r}")
        weights_path = declared
    if weights_path is None:
        found = sorted(p for p in config_path.parent.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise _bad(f"{len(found)} weight files beside {CONFIG_NAME}; name one in its 'weights' field")
        weights_path = found[0]
    if not weights_path.is_file():
        raise ModelError("model_not_found", f"weights {weights_path.name} not found beside {CONFIG_NAME}")
    return config_path, weights_path
