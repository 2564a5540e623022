"""A customer's own segmentation network, exported with TorchScript or ``torch.export``.

A model is two files side by side:

* the weights: a TorchScript archive (``torch.jit.save``, usually ``.pt``) or an
  exported program (``torch.export.save``, ``.pt2``);
* ``model.json``, which declares how to feed it and how to read it::

    {
      "format": "torchscript" | "export",
      "name": "acme-lung", "version": "2.1.0",
      "weights": "model.pt",                    # optional: default, the one .pt/.pt2/.ts file beside it
      "input": {
        "spacing_mm": [z, y, x],                # optional: resample to this grid first (trilinear)
        "hu_window": [lo, hi],                  # clip HU to this range
        "normalize": "minmax" | "zscore" | "none",
        "mean": m, "std": s,                    # zscore only; default: the clipped volume's own
        "patch": [pz, py, px],                  # optional: sliding window of this size, else whole volume
        "overlap": 0.5,                         # sliding window overlap in [0, 0.9]
        "batch": 1                              # windows per forward call
      },
      "output": {
        "kind": "logits" | "probabilities",     # over the channel axis
        "classes": {"0": "background", "1": "lung", "2": "ggo", "3": "consolidation"}
      },
      "amp": true                               # optional: float16 autocast on CUDA (default true)
    }

The network sees one tensor ``(N, 1, z, y, x)`` float32 in the canonical
orientation of a supine axial series as DICOM stores it (``z`` foot to head,
``y`` anterior to posterior, ``x`` patient right to left), whatever the input
volume's orientation, and must return ``(N, C, z, y, x)`` scores for the ``C``
declared classes. Class names map to the ctfleet labels (0 background, 1 lung,
2 ground-glass opacity, 3 consolidation); ``lung`` is required.

Scores are turned into probabilities, stitched (Gaussian-weighted sliding
window), resampled back to the input grid (trilinear, slab by slab so memory
stays bounded), and the arg-max label map goes through the same measurement,
scoring, triage and overlays as the built-in analyzer
(:func:`analysis_from_labels`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import analysis as _an
from .analysis import Analysis
from .registry import ModelError, resolve_device
from .timing import Stopwatch
from .volume import Volume

__all__ = ["ModelConfig", "ScriptedAnalyzer", "analysis_from_labels", "file_sha256", "load", "locate", "parse_config"]

CONFIG_NAME = "model.json"
WEIGHT_SUFFIXES = (".pt", ".pt2", ".ts", ".pth")
LABEL_OF_CLASS = {
    "background": 0,
    "lung": 1,
    "ggo": 2,
    "ground_glass_opacity": 2,
    "consolidation": 3,
}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # names go into S3 result prefixes
# Output slices resampled at a time: bounds the (C, slab, Y, X) float32 buffer.
_SLAB = 16
# Probe cube for whole-volume models at load time.
_PROBE = (32, 32, 32)


# -- the config -------------------------------------------------------------------------


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

    def canonical_json(self) -> bytes:
        """A stable encoding of everything that can change the outputs (for the version hash)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("name", "version", "weights")}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode("utf-8")


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

    inp = data.get("input")
    if not isinstance(inp, dict):
        raise _bad("input must be an object")
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

    out = data.get("output")
    if not isinstance(out, dict):
        raise _bad("output must be an object")
    kind = out.get("kind")
    if kind not in ("logits", "probabilities"):
        raise _bad(f"output.kind must be 'logits' or 'probabilities', got {kind!r}")
    classes = out.get("classes")
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
    if 1 not in labels:
        raise _bad("output.classes must include 'lung' (involvement is measured against it)")
    if len(labels) < 2:
        raise _bad("output.classes needs at least two classes")
    amp = data.get("amp", True)
    if not isinstance(amp, bool):
        raise _bad(f"amp must be true or false, got {amp!r}")
    return ModelConfig(
        format=fmt,
        name=name,  # type: ignore[arg-type]
        version=version,  # type: ignore[arg-type]
        weights=weights,
        spacing_mm=spacing,  # type: ignore[arg-type]
        hu_window=(lo, hi),
        normalize=normalize,
        mean=mean,
        std=std,
        patch=patch,
        overlap=float(overlap),
        batch=batch,
        output_kind=kind,
        class_labels=labels,
        amp=amp,
    )


def read_config(path: Path) -> ModelConfig:
    """Read and parse ``model.json`` (``bad_model_config`` for unreadable or invalid JSON)."""
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- loading ----------------------------------------------------------------------------


def _load_module(cfg: ModelConfig, weights: Path, dev: torch.device) -> Any:
    try:
        if cfg.format == "torchscript":
            module = torch.jit.load(str(weights), map_location=dev)
            module.eval()
            return module
        program = torch.export.load(str(weights))
        if dev.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, dev)
        return program.module()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        raise ModelError(
            "bad_model_weights", f"cannot load {weights.name} as format {cfg.format!r}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc


def load(path: str | Path, device: str | torch.device = "auto") -> "ScriptedAnalyzer":
    """Load an exported model onto ``device`` and check it with one probe forward pass.

    Prefer :func:`model.registry.get`, which caches the result per process.

    Parameters
    ----------
    path : str or pathlib.Path
        See :func:`locate`.
    device : str or torch.device
        Where the weights live and inference runs.

    Returns
    -------
    ScriptedAnalyzer

    Raises
    ------
    ModelError
        ``model_not_found``, ``bad_model_config``, ``bad_model_weights``, or
        ``bad_model_output`` when the probe's output does not match the
        declared classes and the input's spatial shape.
    """
    dev = resolve_device(device)
    config_path, weights_path = locate(path)
    cfg = read_config(config_path)
    h = hashlib.sha256()
    h.update(bytes.fromhex(file_sha256(weights_path)))
    h.update(cfg.canonical_json())
    module = _load_module(cfg, weights_path, dev)
    analyzer = ScriptedAnalyzer(
        name=cfg.name,
        version=f"{cfg.name}-{cfg.version}-{h.hexdigest()[:12]}",
        config=cfg,
        module=module,
        device=dev,
        weights_sha256=file_sha256(weights_path),
    )
    analyzer.probe()
    return analyzer


# -- running ----------------------------------------------------------------------------


def _gaussian(patch: tuple[int, int, int], dev: torch.device) -> torch.Tensor:
    """Importance map ``(pz, py, px)`` float32: centre voxels count more (sigma = patch / 8)."""
    axes = []
    for n in patch:
        x = torch.arange(n, device=dev, dtype=torch.float32) - (n - 1) / 2.0
        sigma = max(n / 8.0, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return w.clamp_min(1e-3)  # every voxel keeps some weight, so edges of the volume are covered


def _starts(size: int, patch: int, overlap: float) -> list[int]:
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


@dataclass(eq=False)
class ScriptedAnalyzer:
    """An exported network plus its declared pre/post-processing, loaded on one device.

    Build with :func:`load` (or :func:`model.registry.get`); calling it analyses
    one volume. Not thread-safe for concurrent calls on one CUDA stream; the
    worker runs one study at a time.

    Attributes
    ----------
    name : str
        ``config.name``.
    version : str
        ``f"{name}-{version}-{digest[:12]}"`` where ``digest`` is SHA-256 over
        the weights file's SHA-256 and the canonical ``model.json`` fields that
        affect outputs, so any change of either gives a new result prefix.
    config : ModelConfig
    module : torch.nn.Module
        The loaded ScriptModule or exported GraphModule, on ``device``.
    device : torch.device
    weights_sha256 : str
        Hex SHA-256 of the weights file alone.
    """

    name: str
    version: str
    config: ModelConfig
    module: Any
    device: torch.device
    weights_sha256: str

    @property
    def n_classes(self) -> int:
        """Output channels the network must return."""
        return len(self.config.class_labels)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, z, y, x)`` float32 -> ``(N, C, z, y, x)`` float32 probabilities."""
        use_amp = self.config.amp and self.device.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if not isinstance(out, torch.Tensor):
            raise ModelError("bad_model_output", f"the network returned {type(out).__name__}, not a tensor")
        want = (x.shape[0], self.n_classes, *x.shape[2:])
        if tuple(out.shape) != want:
            raise ModelError("bad_model_output", f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; expected {want}")
        out = out.float()  # softmax and stitching in float32 even after float16 autocast
        return torch.softmax(out, dim=1) if self.config.output_kind == "logits" else out

    def probe(self) -> None:
        """One forward pass on a constant block (``batch`` patches, or a 32^3 cube); raises ``bad_model_output``.

        Catches, at start-up rather than on the first study, a program exported
        for another patch size or batch, or a wrong number of output classes.
        """
        shape = self.config.patch or _PROBE
        n = self.config.batch if self.config.patch else 1
        x = torch.zeros((n, 1, *shape), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            try:
                self._forward(x)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001
                hint = " (check input.patch and input.batch match the exported shape)" if self.config.patch else " (declare input.patch if the network takes a fixed size)"
                raise ModelError("bad_model_output", f"probe forward pass on {tuple(x.shape)} failed{hint}: {type(exc).__name__}: {str(exc)[:200]}") from exc

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(z, y, x)`` normalised input -> ``(C, z, y, x)`` probabilities (sliding window when declared)."""
        cfg = self.config
        if cfg.patch is None:
            return self._forward(x[None, None])[0]
        patch = cfg.patch
        shape = tuple(x.shape)
        pad = [max(0, p - s) for p, s in zip(patch, shape)]
        if any(pad):
            # Pad with the normalised value of air (the window's low end), the same value as outside the body.
            x = F.pad(x[None, None], (0, pad[2], 0, pad[1], 0, pad[0]), value=float(x.min()))[0, 0]
        size = tuple(x.shape)
        acc = torch.zeros((self.n_classes, *size), dtype=torch.float32, device=x.device)
        weight = torch.zeros(size, dtype=torch.float32, device=x.device)
        imp = _gaussian(patch, x.device)
        windows = [
            (z, y, xx)
            for z in _starts(size[0], patch[0], cfg.overlap)
            for y in _starts(size[1], patch[1], cfg.overlap)
            for xx in _starts(size[2], patch[2], cfg.overlap)
        ]
        for i in range(0, len(windows), cfg.batch):
            chunk = windows[i : i + cfg.batch]
            batch = torch.stack([x[z : z + patch[0], y : y + patch[1], c : c + patch[2]] for z, y, c in chunk])[:, None]
            probs = self._forward(batch)
            for (z, y, c), p in zip(chunk, probs):
                acc[:, z : z + patch[0], y : y + patch[1], c : c + patch[2]] += p * imp
                weight[z : z + patch[0], y : y + patch[1], c : c + patch[2]] += imp
        acc /= weight
        return acc[:, : shape[0], : shape[1], : shape[2]]

    def _normalise(self, hu: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        lo, hi = cfg.hu_window
        x = hu.clamp(lo, hi)
        if cfg.normalize == "minmax":
            return (x - lo) / (hi - lo)
        if cfg.normalize == "zscore":
            mean = cfg.mean if cfg.mean is not None else float(x.mean())
            std = cfg.std if cfg.std is not None else max(float(x.std()), 1e-6)
            return (x - mean) / std
        return x

    def __call__(self, volume: Volume, device: str | torch.device | None = None, *, high_threshold: float = 0.85) -> Analysis:
        """Segment ``volume`` with the network and build the standard report.

        Parameters
        ----------
        volume : Volume
            CT in HU, ``(Z, Y, X)``, spacing in mm, affine in RAS+ mm.
        device : str or torch.device, optional
            Ignored except as a check: the analyzer runs where it was loaded
            (``self.device``); ``"auto"`` and ``None`` always pass.
        high_threshold : float
            Score at or above which the triage level is ``HIGH``.

        Returns
        -------
        Analysis
            ``labels`` uint8 ``(Z, Y, X)`` on the input grid with the ctfleet
            labels; the report of :func:`model.analyze` with ``model_version`` =
            :attr:`version` and ``analyzer`` = :attr:`name`.

        Raises
        ------
        VolumeError
            For volumes that cannot be a chest CT (as :func:`model.analyze`).
        ModelError
            ``bad_model_output`` when the network's output has the wrong shape;
            ``device_mismatch`` when ``device`` names another device.
        """
        if device is not None and not (isinstance(device, str) and device == "auto"):
            if resolve_device(device) != self.device:
                raise ModelError("device_mismatch", f"this analyzer was loaded on {self.device}, not {device}")
        t_start = time.perf_counter()
        dev = self.device
        watch = Stopwatch(dev, start=t_start)
        timings, lap = watch.timings, watch.lap

        _an._check(volume)
        orient = _an._orientation(volume.affine)
        spacing = tuple(volume.spacing_mm[a] for a in orient.perm)
        with torch.inference_mode():
            hu_in = torch.from_numpy(np.nan_to_num(volume.hu, nan=-1000.0, posinf=3000.0, neginf=-1024.0))
            hu = _an._to_canonical(hu_in.to(dev, dtype=torch.float32, non_blocking=True), orient).contiguous()
            full = (hu.shape[0], hu.shape[1], hu.shape[2])
            x = self._normalise(hu)
            if self.config.spacing_mm is not None:
                target = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(full, spacing, self.config.spacing_mm))
                if target != full:
                    x = F.interpolate(x[None, None], size=target, mode="trilinear", align_corners=False)[0, 0]
            lap("prepare")
            probs = self._predict(x.contiguous())
            lap("infer")
            lut = torch.tensor(self.config.class_labels, dtype=torch.uint8, device=dev)
            labels = _argmax_on_grid(probs, full, lut)
            del probs, x
            lap("resample")
        return _report(volume, orient, labels, hu, dev, timings, t_start, lap, high_threshold, self.version, self.name)


def _argmax_on_grid(probs: torch.Tensor, shape: tuple[int, int, int], lut: torch.Tensor) -> torch.Tensor:
    """Trilinear resampling of ``(C, z, y, x)`` probabilities to ``shape``, then arg-max through ``lut``.

    Same sampling as ``F.interpolate(mode="trilinear", align_corners=False)``
    (separable: bilinear in-plane per source slice, then linear along z), done
    ``_SLAB`` output slices at a time so only a ``(C, slab, Y, X)`` buffer is live.
    Returns uint8 ``(Z, Y, X)`` on ``probs.device``.
    """
    c, sz, sy, sx = probs.shape
    z_out, y_out, x_out = shape
    if (sz, sy, sx) == shape:
        return lut[probs.argmax(0)]
    dev = probs.device
    src = ((torch.arange(z_out, device=dev, dtype=torch.float64) + 0.5) * (sz / z_out) - 0.5).clamp_min(0.0)
    z0 = src.floor().long().clamp_max(sz - 1)
    z1 = (z0 + 1).clamp_max(sz - 1)
    w1 = (src - z0.double()).float()
    out = torch.empty(shape, dtype=torch.uint8, device=dev)
    for a in range(0, z_out, _SLAB):
        b = min(z_out, a + _SLAB)
        lo, hi = int(z0[a]), int(z1[b - 1]) + 1
        slab = probs[:, lo:hi].permute(1, 0, 2, 3)  # (n, C, sy, sx)
        if (sy, sx) != (y_out, x_out):
            slab = F.interpolate(slab, size=(y_out, x_out), mode="bilinear", align_corners=False)
        w = w1[a:b, None, None, None]
        p = slab[z0[a:b] - lo] * (1.0 - w) + slab[z1[a:b] - lo] * w  # (b - a, C, Y, X)
        out[a:b] = lut[p.argmax(1)]
    return out


# -- the shared report ------------------------------------------------------------------


def _report(
    volume: Volume,
    orient: Any,
    labels_c: torch.Tensor,
    hu_c: torch.Tensor,
    dev: torch.device,
    timings: dict[str, float],
    t_start: float,
    lap: Any,
    high_threshold: float,
    model_version: str,
    analyzer: str,
) -> Analysis:
    """Measure canonical labels exactly as :func:`model.analyze` does and build the Analysis."""
    p = _an.PARAMS
    spacing = tuple(volume.spacing_mm[a] for a in orient.perm)
    ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    flags: list[str] = []
    with torch.inference_mode():
        lung = labels_c > 0
        side: torch.Tensor | None = None
        if float(lung.sum()) * ml < p.min_lung_ml:
            # As the built-in analyzer: no plausible lungs, no labels, score 0.
            flags.append(_an.NOT_A_CHEST)
            labels_c = torch.zeros_like(labels_c)
        else:
            body = hu_c > p.body_hu
            side = _an._split(lung, body)
            side_ml = [float((side == s).sum()) * ml for s in (1, 2)]
            if min(side_ml) < 0.1 * max(side_ml):
                flags.append("one_lung_only")
        lap("split")
    result = _an._finish(volume, orient, labels_c, side, spacing, dev, timings, t_start, flags, high_threshold, hu_c, lap)
    report = dict(result.report)
    report["model_version"] = model_version
    report["analyzer"] = analyzer
    return Analysis(labels=result.labels, report=report, overlays=result.overlays)


def analysis_from_labels(
    volume: Volume,
    labels: np.ndarray | torch.Tensor,
    device: str | torch.device = "auto",
    *,
    model_version: str,
    analyzer: str = "external",
    high_threshold: float = 0.85,
) -> Analysis:
    """The standard report, overlays and label map for labels made by any analyzer.

    Lung volumes per side, lesion volumes, zone involvement, severity (0-24),
    score, triage level and overlays are computed by the same code as
    :func:`model.analyze` (left/right split at the emptiest column near the
    body's midline, zones = thirds of each lung's height).

    Parameters
    ----------
    volume : Volume
        The analysed CT, HU ``(Z, Y, X)``.
    labels : numpy.ndarray or torch.Tensor
        uint8 ``(Z, Y, X)`` on ``volume``'s grid and orientation, values 0..3.
    device : str or torch.device
        Where to measure.
    model_version : str
        Written to ``report["model_version"]``.
    analyzer : str
        Written to ``report["analyzer"]``.
    high_threshold : float
        Score at or above which the triage level is ``HIGH``.

    Returns
    -------
    Analysis

    Raises
    ------
    ValueError
        Labels not on the volume's grid or outside 0..3.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    dev = resolve_device(device)
    lab = torch.as_tensor(labels)
    if tuple(lab.shape) != volume.shape:
        raise ValueError(f"labels {tuple(lab.shape)} are not on the volume's grid {volume.shape}")
    if lab.numel() and int(lab.max()) > 3:
        raise ValueError("labels must be 0 background, 1 lung, 2 GGO, 3 consolidation")

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t_start, 4)

    orient = _an._orientation(volume.affine)
    with torch.inference_mode():
        hu = torch.from_numpy(np.nan_to_num(volume.hu, nan=-1000.0, posinf=3000.0, neginf=-1024.0)).to(dev)
        hu_c = _an._to_canonical(hu, orient).contiguous()
        labels_c = _an._to_canonical(lab.to(dev, dtype=torch.uint8), orient).contiguous()
    return _report(volume, orient, labels_c, hu_c, dev, timings, t_start, lap, high_threshold, model_version, analyzer)
