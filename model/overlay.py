"""Overlay images of the segmentation, drawn with numpy (no imaging libraries).

Images follow the radiological convention: axial with the patient's right on
the image left and anterior up; coronal with superior up and the patient's
right on the image left. Pixels are square in millimetres (anisotropic
spacing is resampled with ``torch.nn.functional.interpolate``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .labels import Label
from .morphology import slice_bincounts
from .orientation import Orientation

__all__ = ["render_overlays", "LUNG_WINDOW", "COLOURS"]

LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)
# lung green, GGO yellow, consolidation red
COLOURS = {Label.LUNG: (0, 220, 0), Label.GGO: (255, 230, 0), Label.CONSOLIDATION: (255, 40, 40)}
_FILL_ALPHA = {Label.GGO: 0.35, Label.CONSOLIDATION: 0.5}
_NAMES = {Label.LUNG: "LUNG", Label.GGO: "GGO", Label.CONSOLIDATION: "CONSOLIDATION"}

# A 3x5 bitmap font with just the letters the legend needs: per letter, its
# five rows (top first) of three pixels each; any other character is blank.
_FONT = (
    "A:010101111101101 C:011100100100011 D:110101101101110 G:011100101101011 I:111010010010111 L:100100100100111 "
    "N:101111111101101 O:010101101101010 R:110101110101101 S:011100010001110 T:111010010010010 U:101101101101111"
)
_GLYPHS = {ch: tuple(bits[r : r + 3] for r in range(0, 15, 3)) for ch, bits in (g.split(":") for g in _FONT.split())}
_BLANK = ("000",) * 5


def _text(img: np.ndarray, text: str, y: int, x: int, colour: tuple[int, int, int], scale: int) -> None:
    h, w = img.shape[:2]
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch, _BLANK)
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
    for k, label in enumerate((Label.LUNG, Label.GGO, Label.CONSOLIDATION)):
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
    out[_outline(labels > 0)] = COLOURS[Label.LUNG]
    for lab in (Label.GGO, Label.CONSOLIDATION):
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


def _profiles(
    labels: torch.Tensor, grid: tuple[torch.Tensor, tuple[int, int, int]] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lung voxels per slice, lesion voxels per slice, and per row (``Y``) the lung's width in its projection along Z.

    With ``grid`` (the labels on the coarser grid they were made from, and the factors), counted there.
    Per-slice bincounts and a max projection: boolean sums over the volume cost ten times more.
    """
    nz, ny, _ = labels.shape
    lab, (fz, fy, fx) = (labels, (1, 1, 1)) if grid is None else (grid[0], tuple(int(f) for f in grid[1]))
    if lab.shape[0] == 0:
        zero = torch.zeros(nz, dtype=torch.int64, device=labels.device)
        return zero, zero, torch.zeros(ny, dtype=torch.int64, device=labels.device)
    counts = slice_bincounts(lab, Label.CONSOLIDATION + 1)
    lung_z = counts[:, Label.LUNG:].sum(dim=1) * (fy * fx)
    lesion_z = counts[:, Label.GGO:].sum(dim=1) * (fy * fx)
    lung_y = (lab.amax(dim=0) > 0).sum(dim=1) * fx
    if grid is None:
        return lung_z, lesion_z, lung_y
    return _expand_counts(lung_z, fz, nz), _expand_counts(lesion_z, fz, nz), _expand_counts(lung_y, fy, ny)


def _axial_picks(lung_z: torch.Tensor, lesion_z: torch.Tensor, nz: int) -> list[int]:
    """Canonical slices to draw: the one with most lesion, then the lungs' middle, lower and upper sixth."""
    picks: list[int] = []
    if bool(lesion_z.any()):
        picks.append(int(torch.argmax(lesion_z)))
    if bool(lung_z.any()):
        zs = torch.nonzero(lung_z).squeeze(1)
        lo, hi = int(zs.min()), int(zs.max())
        picks += [lo + (hi - lo) // 2, lo + (hi - lo) // 6, lo + 5 * (hi - lo) // 6]
    else:
        picks.append(nz // 2)
    return list(dict.fromkeys(picks))


def render_overlays(
    hu: torch.Tensor,
    labels: torch.Tensor,
    spacing_mm: tuple[float, float, float],
    orient: Orientation,
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
    orient : model.orientation.Orientation
        Used to name axial slices by their index in the input array.
    grid : (torch.Tensor, tuple of int), optional
        The labels on the coarser grid ``labels`` was made from (voxel
        repetition, zero padded, edges refined) and the factors; the
        per-slice counts that pick the slices are then taken there, cheaply.

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
    lung_z, lesion_z, lung_y = _profiles(labels, grid)
    flipped = 0 in orient.flip
    out: dict[str, np.ndarray] = {}
    for k in _axial_picks(lung_z, lesion_z, nz):
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
