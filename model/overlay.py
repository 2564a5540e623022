"""Overlay images of the segmentation, drawn with numpy (no imaging libraries).

Images follow the radiological convention: axial with the patient's right on
the image left and anterior up; coronal with superior up and the patient's
right on the image left. Pixels are square in millimetres (anisotropic
spacing is resampled with ``torch.nn.functional.interpolate``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["render_overlays", "LUNG_WINDOW", "COLOURS"]

LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)
COLOURS = {1: (0, 220, 0), 2: (255, 230, 0), 3: (255, 40, 40)}  # lung green, GGO yellow, consolidation red
_FILL_ALPHA = {2: 0.35, 3: 0.5}
_NAMES = {1: "LUNG", 2: "GGO", 3: "CONSOLIDATION"}

# A 3x5 bitmap font with just the letters the legend needs.
_GLYPHS = {
    "A": ("010", "101", "111", "101", "101"),
    "C": ("011", "100", "100", "100", "011"),
    "D": ("110", "101", "101", "101", "110"),
    "G": ("011", "100", "101", "101", "011"),
    "I": ("111", "010", "010", "010", "111"),
    "L": ("100", "100", "100", "100", "111"),
    "N": ("101", "111", "111", "101", "101"),
    "O": ("010", "101", "101", "101", "010"),
    "R": ("110", "101", "110", "101", "101"),
    "S": ("011", "100", "010", "001", "110"),
    "T": ("111", "010", "010", "010", "010"),
    "U": ("101", "101", "101", "101", "111"),
    " ": ("000", "000", "000", "000", "000"),
}


def _text(img: np.ndarray, text: str, y: int, x: int, colour: tuple[int, int, int], scale: int) -> None:
    h, w = img.shape[:2]
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        for r, row in enumerate(glyph):
            for c, bit in enumerate(row):
                if bit == "1":
                    y0, x0 = y + r * scale, x + (i * 4 + c) * scale
                    if 0 <= y0 < h and 0 <= x0 < w:
                        img[y0 : y0 + scale, x0 : x0 + scale] = colour


def _legend(img: np.ndarray) -> None:
    scale = max(1, min(img.shape[0], img.shape[1]) // 180)
    line = 7 * scale
    width = (len("CONSOLIDATION") * 4 + 6) * scale + 2 * scale
    img[: 3 * line + 2 * scale, : width] = (img[: 3 * line + 2 * scale, : width] * 0.3).astype(np.uint8)
    for k, label in enumerate((1, 2, 3)):
        y = scale + k * line
        img[y : y + 5 * scale, scale : 5 * scale] = COLOURS[label]
        _text(img, _NAMES[label], y, 7 * scale, (255, 255, 255), scale)
    # Side markers: the patient's right is on the image left.
    mid = img.shape[0] // 2
    _text(img, "R", mid, scale, (255, 255, 255), scale)
    _text(img, "L", mid, img.shape[1] - 4 * scale, (255, 255, 255), scale)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _compose(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from an HU slice and its labels, both ``(H, W)``."""
    level, width = LUNG_WINDOW
    grey = np.clip((hu - (level - width / 2.0)) / width * 255.0, 0, 255).astype(np.float32)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for lab, alpha in _FILL_ALPHA.items():
        m = labels == lab
        if m.any():
            rgb[m] = rgb[m] * (1 - alpha) + np.asarray(COLOURS[lab], np.float32) * alpha
    out = rgb.astype(np.uint8)
    out[_outline(labels > 0)] = COLOURS[1]
    for lab in (2, 3):
        out[_outline(labels == lab)] = COLOURS[lab]
    _legend(out)
    return out


def _resample(hu: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if (hu.shape[0], hu.shape[1]) != size:
        hu = F.interpolate(hu[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
    return hu.float().cpu().numpy(), labels.cpu().numpy()


def _expand_counts(counts: torch.Tensor, factor: int, n: int) -> torch.Tensor:
    """Per-index counts of a grid upsampled by ``factor`` along that axis, cropped or zero padded to ``n``."""
    counts = torch.repeat_interleave(counts, factor)[:n]
    if counts.numel() < n:
        counts = torch.cat([counts, counts.new_zeros(n - counts.numel())])
    return counts


def render_overlays(
    hu: torch.Tensor,
    labels: torch.Tensor,
    spacing_mm: tuple[float, float, float],
    orient: Any,
    grid: tuple[torch.Tensor, tuple[int, int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Axial key slices and a coronal overview.

    Parameters
    ----------
    hu : torch.Tensor
        ``(Z, Y, X)`` HU in canonical orientation (Z superior, Y posterior, X patient left).
    labels : torch.Tensor
        uint8 ``(Z, Y, X)``, same grid.
    spacing_mm : tuple of float
        Canonical ``(z, y, x)`` spacing in mm.
    orient : model.analysis._Orientation
        Used to name axial slices by their index in the input array.
    grid : (torch.Tensor, tuple of int), optional
        The labels on the grid ``labels`` was upsampled from (by voxel
        repetition, zero padded) and the factors; per-slice counts are then
        taken there, exactly, instead of over the full volume.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"axial_NNN"`` (NNN: index along the input axis that runs
        inferior-superior) and ``"coronal"``, RGB uint8 ``(H, W, 3)``.
    """
    nz, ny, nx = labels.shape
    sz, sy, sx = spacing_mm
    pix = min(sy, sx)
    in_plane = (max(1, int(round(ny * sy / pix))), max(1, int(round(nx * sx / pix))))
    if grid is not None:
        lab_g, factors = grid
        fz, fy, fx = (int(f) for f in factors)
        lung_g = lab_g.gt(0)
        lung_z = _expand_counts(lung_g.sum(dim=(1, 2)) * (fy * fx), fz, nz)
        lesion_z = _expand_counts(lab_g.ge(2).sum(dim=(1, 2)) * (fy * fx), fz, nz)
        lung_y = _expand_counts(lung_g.sum(dim=(0, 2)) * (fz * fx), fy, ny)
    else:
        lung_z = labels.gt(0).sum(dim=(1, 2))
        lesion_z = labels.ge(2).sum(dim=(1, 2))
        lung_y = labels.gt(0).sum(dim=(0, 2))
    picks: list[int] = []
    if bool(lesion_z.any()):
        picks.append(int(torch.argmax(lesion_z)))
    if bool(lung_z.any()):
        zs = torch.nonzero(lung_z).squeeze(1)
        lo, hi = int(zs.min()), int(zs.max())
        picks += [lo + (hi - lo) // 2, lo + (hi - lo) // 6, lo + 5 * (hi - lo) // 6]
    else:
        picks.append(nz // 2)
    flipped = 0 in orient.flip
    out: dict[str, np.ndarray] = {}
    for k in dict.fromkeys(picks):
        index = nz - 1 - k if flipped else k
        h, lab = _resample(hu[k], labels[k], in_plane)
        out[f"axial_{index:03d}"] = _compose(h, lab)

    # Coronal through the lungs' anterior-posterior middle (or the volume's).
    if bool(lung_y.any()):
        ys = torch.nonzero(lung_y).squeeze(1)
        y = int((ys.min() + ys.max()) // 2)
    else:
        y = ny // 2
    size = (max(1, int(round(nz * sz / sx))), nx)
    h, lab = _resample(hu[:, y, :].flip(0), labels[:, y, :].flip(0), size)  # flip: superior up
    out["coronal"] = _compose(h, lab)
    return out
