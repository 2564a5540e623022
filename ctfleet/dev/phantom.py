"""A synthetic chest CT phantom with known truth, for tests and the demo.

Pure numpy and deterministic for a given seed. The geometry follows the
orientation of :meth:`model.volume.Volume.from_spacing`: array axis ``X``
increases toward the patient's left, ``Y`` toward posterior and ``Z`` toward
superior (a supine axial series read foot to head).

Millimetre coordinates used here ("array mm") are ``index * spacing`` per axis,
measured from the centre of voxel ``(0, 0, 0)``, in ``(z, y, x)`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.labels import Label

__all__ = [
    "Opacity", "Phantom", "PhantomSpec", "PRESETS", "chest_phantom", "lung_point_mm", "from_preset",
    "head_phantom", "abdomen_phantom", "water_cylinder",
]

DEFAULT_SHAPE = (64, 160, 160)
DEFAULT_SPACING_MM = (2.5, 2.2, 2.2)

# Typical HU of the materials, close to published adult values.
HU_AIR = -1000.0
HU_LUNG = -850.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_BLOOD = 40.0
HU_BONE_CORTEX = 800.0
HU_BONE_MARROW = 300.0
HU_TABLE = 250.0
NOISE_SD = 15.0


@dataclass(frozen=True)
class Opacity:
    """One spherical opacity, clipped to the lung it lies in.

    Parameters
    ----------
    kind : {"ggo", "consolidation"}
        Ground-glass opacity or consolidation.
    center_mm : tuple of float
        Centre ``(z, y, x)`` in array millimetres (index times spacing). Use
        :func:`lung_point_mm` to place one relative to a lung.
    radius_mm : float
        Sphere radius in mm.
    hu : float or None
        Attenuation inside the opacity; default -550 HU for GGO, +20 HU for
        consolidation.
    """

    kind: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    hu: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ggo", "consolidation"):
            raise ValueError(f"kind must be 'ggo' or 'consolidation', not {self.kind!r}")
        if self.radius_mm <= 0:
            raise ValueError("radius_mm must be positive")

    @property
    def value_hu(self) -> float:
        if self.hu is not None:
            return float(self.hu)
        return -550.0 if self.kind == "ggo" else 20.0


@dataclass(frozen=True)
class Phantom:
    """A generated phantom.

    Attributes
    ----------
    hu : numpy.ndarray
        float32 ``(Z, Y, X)`` Hounsfield units.
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size in mm.
    truth : numpy.ndarray
        uint8 ``(Z, Y, X)`` with :class:`model.labels.Label` values: lung
        (vessels included, airways excluded), GGO and consolidation.
    """

    hu: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]
    truth: np.ndarray = field(repr=False)

    @property
    def voxel_ml(self) -> float:
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0


@dataclass(frozen=True)
class _Geometry:
    """Derived anatomy positions in array mm for one shape/spacing."""

    cx: float
    cy: float
    ax: float  # body semi-axis along X (mm)
    ay: float  # body semi-axis along Y (mm)
    z_len: float
    lung_cx: dict[str, float]
    lung_rx: dict[str, float]
    lung_cy: float
    lung_ry: float
    lung_z0: dict[str, float]  # dome top (mm) of the base
    lung_z1: float  # apex


def _geometry(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> _Geometry:
    z, y, x = shape
    sz, sy, sx = spacing_mm
    x_len, y_len, z_len = (x - 1) * sx, (y - 1) * sy, (z - 1) * sz
    cx = 0.5 * x_len
    # The body sits a little anterior so the table fits below it (posterior = +Y).
    cy = 0.45 * y_len
    ax, ay = 0.42 * x_len, 0.30 * y_len
    # Patient right is toward smaller X; the right lung is a bit wider.
    lung_cx = {"right": cx - 0.46 * ax, "left": cx + 0.47 * ax}
    lung_rx = {"right": 0.40 * ax, "left": 0.35 * ax}
    return _Geometry(
        cx=cx,
        cy=cy,
        ax=ax,
        ay=ay,
        z_len=z_len,
        lung_cx=lung_cx,
        lung_rx=lung_rx,
        lung_cy=cy + 0.05 * ay,
        lung_ry=0.72 * ay,
        # The right hemidiaphragm sits higher (liver), the left lower.
        lung_z0={"right": 0.20 * z_len, "left": 0.16 * z_len},
        lung_z1=0.93 * z_len,
    )


def lung_point_mm(
    side: str,
    rel_zyx: tuple[float, float, float],
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
) -> tuple[float, float, float]:
    """A point inside one phantom lung, in array mm.

    Parameters
    ----------
    side : {"left", "right"}
        The patient's side.
    rel_zyx : tuple of float
        Relative position in ``[0, 1]``: ``z`` from lung base to apex, ``y`` from
        anterior to posterior, ``x`` from medial to lateral edge.
    shape, spacing_mm : tuple
        The phantom's ``(Z, Y, X)`` shape and ``(z, y, x)`` spacing in mm.

    Returns
    -------
    tuple of float
        ``(z, y, x)`` in array mm.
    """
    g = _geometry(shape, spacing_mm)
    rz, ry, rx = rel_zyx
    z = g.lung_z0[side] + rz * (g.lung_z1 - g.lung_z0[side])
    y = g.lung_cy + (2.0 * ry - 1.0) * g.lung_ry * 0.8
    direction = -1.0 if side == "right" else 1.0  # lateral = away from the midline
    x = g.lung_cx[side] + direction * (2.0 * rx - 1.0) * g.lung_rx[side] * 0.8
    return (float(z), float(y), float(x))


def _segment_distance(
    zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, p0: np.ndarray, p1: np.ndarray
) -> np.ndarray:
    """Distance (mm) from each grid point to the segment p0-p1 (both (z, y, x) mm)."""
    d = p1 - p0
    length2 = float(d @ d) or 1e-9
    t = ((zz - p0[0]) * d[0] + (yy - p0[1]) * d[1] + (xx - p0[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((zz - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 + (xx - p0[2] - t * d[2]) ** 2)


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz, ny, nx = shape
    sz, sy, sx = spacing
    return (
        (np.arange(nz, dtype=np.float32) * sz)[:, None, None],
        (np.arange(ny, dtype=np.float32) * sy)[None, :, None],
        (np.arange(nx, dtype=np.float32) * sx)[None, None, :],
    )


_Axes = tuple[np.ndarray, np.ndarray, np.ndarray]  # (zz, yy, xx) array mm, broadcastable to (Z, Y, X)


def _paint_spine(hu: np.ndarray, g: _Geometry, yy: np.ndarray, xx: np.ndarray) -> None:
    """Vertebral body (marrow inside a cortical shell), posterior midline."""
    spine_r = np.sqrt((xx - g.cx) ** 2 + (yy - (g.cy + 0.62 * g.ay)) ** 2)
    hu[np.broadcast_to(spine_r <= 16.0, hu.shape)] = HU_BONE_CORTEX
    hu[np.broadcast_to(spine_r <= 12.5, hu.shape)] = HU_BONE_MARROW


def _paint_table(hu: np.ndarray, g: _Geometry, yy: np.ndarray, xx: np.ndarray) -> None:
    """Patient table: a dense slab below (posterior to) the body, separated by air."""
    table_y0 = g.cy + g.ay + 10.0
    table = (yy >= table_y0) & (yy <= table_y0 + 18.0) & (np.abs(xx - g.cx) <= 0.9 * g.cx)
    hu[np.broadcast_to(table, hu.shape)] = HU_TABLE


def _paint_chest_wall(hu: np.ndarray, g: _Geometry, axes: _Axes) -> tuple[np.ndarray, np.ndarray]:
    """Body with its fat ring, the table, ribs and spine; returns the body's radius map and its inner (non-fat) part."""
    zz, yy, xx = axes
    # Body: elliptic cylinder with a subcutaneous fat ring.
    rad = np.sqrt(((xx - g.cx) / g.ax) ** 2 + ((yy - g.cy) / g.ay) ** 2)  # (1, Y, X)
    hu[np.broadcast_to(rad <= 1.0, hu.shape)] = HU_FAT
    inner = np.broadcast_to(rad <= 1.0 - 12.0 / g.ay, hu.shape)
    hu[inner] = HU_SOFT
    _paint_table(hu, g, yy, xx)
    # Ribs: short elliptic bands every ~22 mm, open at the sternum.
    rib_levels = np.arange(0.1 * g.z_len, g.z_len, 22.0)
    near_rib_z = np.min(np.abs(zz[..., None] - rib_levels.astype(np.float32)), axis=-1)  # (Z, 1, 1)
    rib_ring = (rad >= 0.86) & (rad <= 0.91) & ~((np.abs(xx - g.cx) < 30.0) & (yy < g.cy))
    hu[(near_rib_z <= 4.5) & rib_ring] = HU_BONE_CORTEX
    _paint_spine(hu, g, yy, xx)
    return rad, inner


def _lung_masks(g: _Geometry, axes: _Axes, rad: np.ndarray) -> dict[str, np.ndarray]:
    """Per side: elliptic cross-sections inside the rib cage, dome-shaped bases, tapering apices, around the heart."""
    zz, yy, xx = axes
    lungs: dict[str, np.ndarray] = {}
    for side in ("right", "left"):
        ex = (xx - g.lung_cx[side]) / g.lung_rx[side]
        ey = (yy - g.lung_cy) / g.lung_ry
        e2 = ex**2 + ey**2  # (1, Y, X)
        z0, z1 = g.lung_z0[side], g.lung_z1
        dome = z0 + 0.12 * g.z_len * np.clip(1.0 - e2, 0.0, 1.0)  # base higher at the centre
        taper = np.clip((z1 - zz) / (0.35 * (z1 - z0)), 0.0, 1.0)  # apex narrows
        lungs[side] = (e2 <= np.sqrt(taper)) & (zz >= dome) & (zz <= z1) & (rad <= 0.84)
    return lungs


def _heart(g: _Geometry, axes: _Axes) -> np.ndarray:
    """Anterior, slightly left, low in the chest; the lungs wrap around it."""
    zz, yy, xx = axes
    return (
        ((xx - (g.cx + 0.12 * g.ax)) / (0.38 * g.ax)) ** 2
        + ((yy - (g.cy - 0.20 * g.ay)) / (0.55 * g.ay)) ** 2
        + ((zz - 0.32 * g.z_len) / (0.28 * g.z_len)) ** 2
    ) <= 1.0


def _paint_vessels(hu: np.ndarray, lungs: dict[str, np.ndarray], g: _Geometry, axes: _Axes,
                   spacing: tuple[float, float, float], rng: np.random.Generator) -> None:
    """Thin tubes fanning out from each hilum (10 per lung, random targets)."""
    zz, yy, xx = axes
    shape = (hu.shape[0], hu.shape[1], hu.shape[2])
    for side in ("right", "left"):
        lung = lungs[side]
        if not lung.any():
            continue
        hilum = np.array([0.55 * g.z_len, g.lung_cy - 0.05 * g.lung_ry, g.lung_cx[side] + (0.7 if side == "right" else -0.7) * g.lung_rx[side]])
        for _ in range(10):
            target: np.ndarray = np.array(
                lung_point_mm(side, (rng.uniform(0.05, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.5, 1.0)), shape, spacing)
            )
            radius = rng.uniform(1.2, 2.0)
            tube = _segment_distance(zz, yy, xx, hilum, target) <= radius
            hu[tube & lung] = HU_BLOOD


def _paint_airways(hu: np.ndarray, g: _Geometry, axes: _Axes, sz: float, outside: np.ndarray) -> np.ndarray:
    """Trachea down to the carina, then two main bronchi into the hila; returns the airway mask.

    The trachea's wall is soft tissue where ``outside`` (not lung, inside the body's fat ring) allows.
    """
    zz, yy, xx = axes
    carina = np.array([0.62 * g.z_len, g.cy - 0.1 * g.ay, g.cx])
    top = np.array([g.z_len + sz, carina[1], carina[2]])
    airway = _segment_distance(zz, yy, xx, carina, top) <= 8.0
    for side in ("right", "left"):
        direction = -1.0 if side == "right" else 1.0
        end = np.array([0.50 * g.z_len, g.lung_cy - 0.05 * g.lung_ry, g.lung_cx[side] - direction * 0.55 * g.lung_rx[side]])
        airway |= _segment_distance(zz, yy, xx, carina, end) <= 5.5
    wall = _segment_distance(zz, yy, xx, carina, top) <= 10.0
    hu[wall & ~airway & outside] = HU_SOFT
    hu[airway] = HU_AIR
    return airway


def _paint_opacities(hu: np.ndarray, truth: np.ndarray, opacities: Sequence[Opacity], axes: _Axes, airway: np.ndarray) -> None:
    """Opacities, clipped to the lung (airways stay air)."""
    zz, yy, xx = axes
    lung_any = (truth == Label.LUNG) | (truth > Label.LUNG)
    for op in opacities:
        cz, cy_, cx_ = op.center_mm
        sphere = ((zz - cz) ** 2 + (yy - cy_) ** 2 + (xx - cx_) ** 2) <= op.radius_mm**2
        region = sphere & lung_any & ~airway
        if op.kind == "ggo":
            # Keep vessels visible through ground glass, as in real GGO.
            hu[region & (hu < -200)] = op.value_hu
            truth[region & (truth != Label.CONSOLIDATION)] = Label.GGO
        else:
            hu[region] = op.value_hu
            truth[region] = Label.CONSOLIDATION


def chest_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    opacities: tuple[Opacity, ...] | list[Opacity] = (),
    seed: int = 0,
) -> Phantom:
    """Build a chest CT phantom.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)``; at least ``(16, 64, 64)`` for recognisable anatomy.
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size in mm.
    opacities : sequence of Opacity
        Lesions to paint; each is clipped to the lung it lies in.
    seed : int
        Seed for the noise and vessel layout; same seed, same phantom.

    Returns
    -------
    Phantom
        ``hu`` float32 ``(Z, Y, X)`` in HU and the ``truth`` label map.

    Raises
    ------
    ValueError
        For a shape that is not three positive integers.
    """
    full = tuple(int(s) for s in shape)
    if len(full) != 3 or min(full) < 1:
        raise ValueError(f"shape must be three positive ints, got {full}")
    shape = (full[0], full[1], full[2])
    sz, sy, sx = (float(s) for s in spacing_mm)
    spacing = (sz, sy, sx)
    rng = np.random.default_rng(seed)
    g = _geometry(shape, spacing)
    axes = _grid(shape, spacing)
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    truth = np.zeros(shape, dtype=np.uint8)
    rad, inner = _paint_chest_wall(hu, g, axes)
    heart = _heart(g, axes)
    lungs = {side: mask & ~heart for side, mask in _lung_masks(g, axes, rad).items()}
    for mask in lungs.values():
        hu[mask] = HU_LUNG
        truth[mask] = Label.LUNG
    hu[heart & inner] = HU_BLOOD
    _paint_vessels(hu, lungs, g, axes, spacing, rng)
    airway = _paint_airways(hu, g, axes, spacing[0], inner & ~lungs["right"] & ~lungs["left"])
    truth[airway] = Label.BACKGROUND
    _paint_opacities(hu, truth, opacities, axes, airway)
    hu += rng.normal(0.0, NOISE_SD, size=shape).astype(np.float32)
    return Phantom(hu=hu.astype(np.float32, copy=False), spacing_mm=spacing, truth=truth)


def _noisy(hu: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> Phantom:
    hu = hu + rng.normal(0.0, NOISE_SD, size=hu.shape).astype(np.float32)
    return Phantom(hu=hu.astype(np.float32), spacing_mm=spacing, truth=np.zeros(hu.shape, np.uint8))


def head_phantom(shape: tuple[int, int, int] = (48, 128, 128), spacing_mm: tuple[float, float, float] = (3.0, 1.8, 1.8), seed: int = 0) -> Phantom:
    """A head-like volume (not a chest): skull shell, brain, ventricles, sinus air. Truth is all background."""
    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing_mm)
    zz, yy, xx = _grid(shape, spacing)  # type: ignore[arg-type]
    nz, ny, nx = shape
    cz, cy, cx = 0.5 * (nz - 1) * spacing[0], 0.5 * (ny - 1) * spacing[1], 0.5 * (nx - 1) * spacing[2]
    r = np.sqrt(((xx - cx) / 75.0) ** 2 + ((yy - cy) / 90.0) ** 2 + ((zz - cz) / 80.0) ** 2)
    hu = np.full(shape, HU_AIR, np.float32)
    hu[r <= 1.0] = HU_BONE_CORTEX
    hu[r <= 0.92] = 35.0  # brain
    vent = np.sqrt(((xx - cx) / 12.0) ** 2 + ((yy - cy) / 30.0) ** 2 + ((zz - cz) / 20.0) ** 2) <= 1.0
    hu[vent] = 5.0
    sinus = np.sqrt(((xx - cx) / 15.0) ** 2 + ((yy - (cy - 70.0)) / 8.0) ** 2 + ((zz - (cz - 30.0)) / 10.0) ** 2) <= 1.0
    hu[sinus] = HU_AIR
    return _noisy(hu, rng, spacing)  # type: ignore[arg-type]


def abdomen_phantom(shape: tuple[int, int, int] = DEFAULT_SHAPE, spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM, seed: int = 0) -> Phantom:
    """An abdomen-like volume (not a chest): soft tissue, fat, spine, liver, many bowel-gas pockets."""
    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing_mm)
    g = _geometry(shape, spacing)  # type: ignore[arg-type]
    zz, yy, xx = _grid(shape, spacing)  # type: ignore[arg-type]
    hu = np.full(shape, HU_AIR, np.float32)
    rad = np.sqrt(((xx - g.cx) / g.ax) ** 2 + ((yy - g.cy) / g.ay) ** 2)
    hu[np.broadcast_to(rad <= 1.0, shape)] = HU_FAT
    hu[np.broadcast_to(rad <= 1.0 - 15.0 / g.ay, shape)] = 30.0
    liver = np.broadcast_to((((xx - (g.cx - 0.4 * g.ax)) / (0.45 * g.ax)) ** 2 + ((yy - g.cy) / (0.7 * g.ay)) ** 2) <= 1.0, shape)
    hu[liver] = 60.0
    _paint_spine(hu, g, yy, xx)
    # Bowel gas: pockets of 8-28 mm radius in the left and anterior abdomen (about 0.3-0.6 L in all).
    for _ in range(14):
        c = (rng.uniform(0.15, 0.85) * g.z_len, g.cy + rng.uniform(-0.6, 0.3) * g.ay, g.cx + rng.uniform(-0.1, 0.7) * g.ax)
        r_mm = rng.uniform(8.0, 28.0)
        hu[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r_mm**2] = HU_AIR
    _paint_table(hu, g, yy, xx)
    return _noisy(hu, rng, spacing)  # type: ignore[arg-type]


def water_cylinder(shape: tuple[int, int, int] = (40, 128, 128), spacing_mm: tuple[float, float, float] = (2.5, 2.0, 2.0), seed: int = 0) -> Phantom:
    """A uniform water cylinder (the QA phantom every scanner has): 0 HU inside, air around."""
    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing_mm)
    _, yy, xx = _grid(shape, spacing)  # type: ignore[arg-type]
    cy, cx = 0.5 * (shape[1] - 1) * spacing[1], 0.5 * (shape[2] - 1) * spacing[2]
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    hu = np.full(shape, HU_AIR, np.float32)
    hu[np.broadcast_to(r <= 0.4 * shape[2] * spacing[2], shape)] = 0.0
    return _noisy(hu, rng, spacing)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PhantomSpec:
    """Arguments for :func:`chest_phantom`, by name in :data:`PRESETS`."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    opacities: tuple[Opacity, ...]
    description: str


def _high_opacities() -> tuple[Opacity, ...]:
    pts = [
        ("right", "ggo", (0.25, 0.70, 0.55), 24.0),
        ("right", "consolidation", (0.62, 0.55, 0.55), 16.0),
        ("right", "ggo", (0.55, 0.50, 0.60), 22.0),
        ("right", "ggo", (0.80, 0.45, 0.50), 18.0),
        ("right", "consolidation", (0.45, 0.30, 0.45), 12.0),
        ("left", "ggo", (0.25, 0.70, 0.55), 22.0),
        ("left", "consolidation", (0.62, 0.60, 0.55), 14.0),
        ("left", "ggo", (0.55, 0.55, 0.55), 20.0),
        ("left", "ggo", (0.80, 0.45, 0.50), 16.0),
        ("left", "consolidation", (0.50, 0.25, 0.60), 11.0),
    ]
    return tuple(Opacity(kind, lung_point_mm(side, rel), 1.6 * r) for side, kind, rel, r in pts)


PRESETS: dict[str, PhantomSpec] = {
    "clean": PhantomSpec(DEFAULT_SHAPE, DEFAULT_SPACING_MM, (), "normal lungs; expected triage LOW"),
    "medium": PhantomSpec(
        DEFAULT_SHAPE,
        DEFAULT_SPACING_MM,
        (
            Opacity("ggo", lung_point_mm("right", (0.3, 0.7, 0.6)), 16.0),
            Opacity("ggo", lung_point_mm("left", (0.4, 0.7, 0.6)), 13.0),
        ),
        "a few ground-glass opacities; expected triage MEDIUM",
    ),
    "high": PhantomSpec(
        DEFAULT_SHAPE,
        DEFAULT_SPACING_MM,
        _high_opacities(),
        "multifocal GGO and consolidation in both lungs (>30 % involvement); expected triage HIGH",
    ),
    "left_only": PhantomSpec(
        DEFAULT_SHAPE,
        DEFAULT_SPACING_MM,
        (Opacity("consolidation", lung_point_mm("left", (0.5, 0.6, 0.55)), 18.0),),
        "one consolidation in the patient's left lung only",
    ),
}


def from_preset(name: str, seed: int = 0) -> Phantom:
    """Build the phantom of one :data:`PRESETS` entry.

    Raises
    ------
    KeyError
        For an unknown preset name.
    """
    spec = PRESETS[name]
    return chest_phantom(spec.shape, spec.spacing_mm, spec.opacities, seed=seed)
