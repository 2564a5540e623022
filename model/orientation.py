"""The canonical view of an input volume: orientation from the affine, finite HU as a tensor.

Canonical orientation: array axis 0 runs to superior, axis 1 to posterior,
axis 2 to the patient's left (what a supine axial series read foot to head
gives), so left/right and up/down never depend on how the input array was
stored. Every analyzer works in it and maps its labels back at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .grid import Grid
from .params import PARAMS
from .volume import Volume, VolumeError

__all__ = [
    "CanonicalVolume",
    "Orientation",
    "canonical_orientation",
    "canonical_volume",
    "finite_hu",
    "from_canonical",
    "to_canonical",
]


@dataclass(frozen=True)
class Orientation:
    """How to view the input array in canonical (S, P, L) orientation.

    Attributes
    ----------
    perm : tuple of int
        Canonical axis ``c`` takes input axis ``perm[c]``.
    flip : tuple of int
        Canonical axes to flip after the permutation.
    """

    perm: tuple[int, int, int]
    flip: tuple[int, ...]

    def spacing(self, spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        """The input's ``(z, y, x)`` voxel size in mm, reordered to the canonical axes."""
        return (spacing_mm[self.perm[0]], spacing_mm[self.perm[1]], spacing_mm[self.perm[2]])


def canonical_orientation(affine: np.ndarray, max_obliquity_deg: float = PARAMS.max_obliquity_deg) -> Orientation:
    """The permutation and flips that bring an array to canonical orientation.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 voxel-to-RAS+ (mm) matrix of a :class:`Volume`.
    max_obliquity_deg : float
        Largest angle allowed between an array axis and its nearest patient axis.

    Returns
    -------
    Orientation

    Raises
    ------
    VolumeError
        ``bad_orientation`` for an oblique volume or two axes along one patient axis.
    """
    # Array axis a (Z, Y, X) is affine column 2 - a (i = X, j = Y, k = Z).
    # Canonical axis 0 wants +S (RAS row 2), axis 1 wants -A (row 1), axis 2 wants -R (row 0).
    cols = np.stack([affine[:3, 2 - a] for a in range(3)])  # (array axis, RAS)
    unit = cols / np.linalg.norm(cols, axis=1, keepdims=True)
    perm = [-1, -1, -1]
    flips: list[int] = []
    wanted = {2: (0, 1.0), 1: (1, -1.0), 0: (2, -1.0)}  # RAS row -> (canonical axis, sign)
    worst = float(np.min(np.max(np.abs(unit), axis=1)))
    if worst < math.cos(math.radians(max_obliquity_deg)):
        angle = math.degrees(math.acos(min(1.0, worst)))
        raise VolumeError("bad_orientation", f"an array axis is {angle:.0f} degrees off every patient axis (oblique volume)")
    for a in range(3):
        ras = int(np.argmax(np.abs(unit[a])))
        c, sign = wanted[ras]
        if perm[c] != -1:
            raise VolumeError("bad_orientation", "two array axes point along the same patient axis")
        perm[c] = a
        if np.sign(unit[a, ras]) != sign:
            flips.append(c)
    return Orientation(perm=(perm[0], perm[1], perm[2]), flip=tuple(flips))


def to_canonical(t: torch.Tensor, o: Orientation) -> torch.Tensor:
    """View an input-oriented ``(Z, Y, X)`` tensor in canonical orientation (a copy only when flipped)."""
    t = t.permute(*o.perm)
    return t.flip(o.flip) if o.flip else t


def from_canonical(t: torch.Tensor, o: Orientation) -> torch.Tensor:
    """The inverse of :func:`to_canonical`: a canonical tensor back in the input's orientation."""
    if o.flip:
        t = t.flip(o.flip)
    inverse = [0, 0, 0]
    for c, a in enumerate(o.perm):
        inverse[a] = c
    return t.permute(*inverse)


def finite_hu(hu: np.ndarray) -> torch.Tensor:
    """The volume as a tensor, NaN and infinities replaced; no copy when it is already finite.

    Parameters
    ----------
    hu : numpy.ndarray
        float32 ``(Z, Y, X)`` in HU.

    Returns
    -------
    torch.Tensor
        float32 ``(Z, Y, X)`` on the CPU: NaN -1000 HU, +inf 3000 HU, -inf -1024 HU.
    """
    t = torch.from_numpy(hu) if hu.flags.writeable else None
    # NaN or an infinity anywhere makes the sum NaN or infinite (a finite sum
    # proves all values finite; an overflowing one merely takes the slow path).
    if t is not None and math.isfinite(float(t.sum())):
        return t
    return torch.from_numpy(np.nan_to_num(hu, nan=-1000.0, posinf=3000.0, neginf=-1024.0))


@dataclass(frozen=True)
class CanonicalVolume(Grid):
    """An input volume seen in canonical orientation, on the analysis device.

    Attributes
    ----------
    hu : torch.Tensor
        ``(Z, Y, X)`` canonical HU (float32, or float16 on CUDA for the built-in analyzer).
    spacing_mm : tuple of float
        Canonical ``(z, y, x)`` voxel size in mm.
    orientation : Orientation
        How the input array maps to it.
    """

    orientation: Orientation


def canonical_volume(
    volume: Volume,
    orientation: Orientation,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    contiguous: bool = False,
) -> CanonicalVolume:
    """The finite HU of ``volume`` on ``device`` in canonical orientation.

    Parameters
    ----------
    volume : Volume
        CT in HU, ``(Z, Y, X)``, spacing in mm.
    orientation : Orientation
        From :func:`canonical_orientation` of ``volume.affine``.
    device : torch.device
        Where the tensor goes.
    dtype : torch.dtype
        Its type.
    contiguous : bool
        Lay the canonical tensor out in memory (else it may be a permuted view).

    Returns
    -------
    CanonicalVolume
    """
    hu = to_canonical(finite_hu(volume.hu).to(device, dtype=dtype, non_blocking=True), orientation)
    return CanonicalVolume(hu=hu.contiguous() if contiguous else hu, spacing_mm=orientation.spacing(volume.spacing_mm),
                           orientation=orientation)
