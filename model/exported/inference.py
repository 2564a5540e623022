"""Running an exported network on a volume: normalisation, the sliding window, labels on the input grid."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis import Analysis, analysis_of_canonical_labels
from ..device import resolve_device
from ..orientation import CanonicalVolume, canonical_orientation, canonical_volume
from ..registry import ModelError
from ..timing import Stopwatch
from ..volume import Volume
from .config import ModelConfig

__all__ = ["ScriptedAnalyzer"]

# Output slices resampled at a time: bounds the (C, slab, Y, X) float32 buffer.
_SLAB = 16
# Probe cube for whole-volume models at load time.
_PROBE = (32, 32, 32)


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


def _windows(size: tuple[int, ...], patch: tuple[int, int, int], overlap: float) -> list[tuple[int, int, int]]:
    """Corners of the sliding windows covering a ``size`` volume, in C order."""
    return [
        (z, y, x)
        for z in _starts(size[0], patch[0], overlap)
        for y in _starts(size[1], patch[1], overlap)
        for x in _starts(size[2], patch[2], overlap)
    ]


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


@dataclass(eq=False)
class ScriptedAnalyzer:
    """An exported network plus its declared pre/post-processing, loaded on one device.

    Build with :func:`model.exported.loader.load` (or :func:`model.registry.get`);
    calling it analyzes one volume. Not thread-safe for concurrent calls on one
    CUDA stream; the worker runs one study at a time.

    Attributes
    ----------
    name : str
        ``config.name``.
    version : str
        ``f"{name}-{version}-{digest[:12]}"`` where ``digest`` is SHA-256 over
        the weights file's SHA-256 and the canonical ``model.json`` fields that
        affect outputs, so any change of either gives a new result prefix
        (:func:`model.exported.loader.model_version`).
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
        windows = _windows(size, patch, cfg.overlap)
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

    def _network_input(self, view: CanonicalVolume) -> torch.Tensor:
        """The normalised canonical HU, resampled (trilinear) to the declared grid when there is one."""
        x = self._normalise(view.hu)
        if self.config.spacing_mm is not None:
            target = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(view.shape, view.spacing_mm, self.config.spacing_mm))
            if target != view.shape:
                x = F.interpolate(x[None, None], size=target, mode="trilinear", align_corners=False)[0, 0]
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
        watch = Stopwatch(self.device, start=time.perf_counter())
        volume.check_analyzable()
        orient = canonical_orientation(volume.affine)
        with torch.inference_mode():
            view = canonical_volume(volume, orient, self.device, contiguous=True)
            x = self._network_input(view)
            watch.lap("prepare")
            probs = self._predict(x.contiguous())
            watch.lap("infer")
            lut = torch.tensor(self.config.class_labels, dtype=torch.uint8, device=self.device)
            labels = _argmax_on_grid(probs, view.shape, lut)
            del probs, x
            watch.lap("resample")
        return analysis_of_canonical_labels(volume, view, labels, watch, high_threshold=high_threshold,
                                            model_version=self.version, analyzer=self.name)
