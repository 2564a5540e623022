"""The one input type of the model: a CT volume in Hounsfield units (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Volume", "VolumeError"]


class VolumeError(ValueError):
    """A volume that cannot be analyzed (bad shape, spacing or geometry).

    ``reason`` is a short machine-readable code, recorded by the caller.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Volume:
    """A CT volume, valid once built.

    Parameters
    ----------
    hu : numpy.ndarray
        float32 array of shape ``(Z, Y, X)`` in Hounsfield units. ``Z`` indexes
        slices, ``Y`` image rows, ``X`` image columns.
    spacing_mm : tuple of float
        Voxel size ``(z, y, x)`` in millimetres, all > 0.
    affine : numpy.ndarray
        4x4 matrix mapping a voxel index ``(i, j, k, 1)`` -- ``i`` along ``X``,
        ``j`` along ``Y``, ``k`` along ``Z`` -- to RAS+ millimetres, exactly as
        nibabel reads an image whose data array is ``hu.transpose(2, 1, 0)``.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise VolumeError("bad_shape", f"expected a 3-D (Z, Y, X) array, got shape {hu.shape}")
        if min(hu.shape) < 1:
            raise VolumeError("bad_shape", f"empty volume, shape {hu.shape}")
        if hu.dtype != np.float32:
            hu = hu.astype(np.float32)
        object.__setattr__(self, "hu", hu)
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise VolumeError("bad_spacing", f"spacing must be three positive numbers, got {self.spacing_mm}")
        object.__setattr__(self, "spacing_mm", spacing)
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VolumeError("bad_affine", "affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise VolumeError("bad_affine", "affine is singular")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0

    def check_analyzable(self) -> None:
        """Refuse a volume that cannot be a chest CT at all, whatever an analyzer would make of it.

        Raises
        ------
        VolumeError
            ``too_few_slices`` under 8 voxels along an axis; ``bad_spacing`` for a
            voxel size above 20 mm or below 0.05 mm.
        """
        z, y, x = self.shape
        if min(z, y, x) < 8:
            raise VolumeError("too_few_slices", f"need at least 8 voxels along every axis, got shape {self.shape}")
        if max(self.spacing_mm) > 20.0:
            raise VolumeError("bad_spacing", f"voxel size {self.spacing_mm} mm exceeds 20 mm")
        if min(self.spacing_mm) < 0.05:
            raise VolumeError("bad_spacing", f"voxel size {self.spacing_mm} mm is implausibly small")

    @classmethod
    def from_spacing(cls, hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> "Volume":
        """A volume with a plain axial affine: X to patient left, Y to posterior, Z to superior.

        This matches a supine axial DICOM series (image rows go anterior to
        posterior, columns go right to left, slices go foot to head).
        """
        sz, sy, sx = (float(s) for s in spacing_mm)
        affine = np.diag([-sx, -sy, sz, 1.0])  # LPS index directions expressed in RAS+
        return cls(hu=hu, spacing_mm=(sz, sy, sx), affine=affine)

