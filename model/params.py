"""The built-in analyzer's thresholds and sizes (HU, mm, ml), in one frozen record.

Any change here changes outputs: bump :data:`model.analysis.MODEL_VERSION` with it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PARAMS", "Params"]


@dataclass(frozen=True)
class Params:
    """Thresholds in HU, sizes in mm (grid spacings, radii) or ml (volumes)."""

    work_mm: float = 2.0  # target in-plane / slice spacing of the work grid
    coarse_mm: float = 4.0  # target spacing of the coarse grid
    body_hu: float = -350.0  # tissue vs air (body, table, blankets)
    air_hu: float = -400.0  # aerated lung vs tissue
    internal_air_hu: float = -300.0  # the lungs' air space on the coarse grid, ground glass included
    body_open_mm: float = 6.0  # cuts blankets and thin bridges to the table
    airway_erode_mm: float = 8.0  # removes trachea (r ~ 9 mm) links and main bronchi (r ~ 6 mm)
    min_lung_ml: float = 300.0  # less than this is not a pair of lungs
    min_partial_lung_ml: float = 100.0  # ... unless the scan cuts them (lung in its first or last slice)
    min_lung_part_frac: float = 0.15  # lung cores smaller than this x largest are gut gas etc.
    min_lung_fragment_ml: float = 2.0  # a smaller piece of a lung's core, cut off by opacities, is let go
    airway_band_frac: float = 0.15  # the trachea and main bronchi lie within this share of the body's width of its midline
    lung_close_mm: float = 16.0  # lets peripheral dense lesions count as lung
    ggo_hu: tuple[float, float] = (-750.0, -300.0)
    consolidation_hu: tuple[float, float] = (-300.0, 100.0)
    vessel_open_mm: float = 3.0  # opening removes tubes thinner than about 2x this
    min_lesion_ml: float = 0.5  # about a 1 cm sphere
    max_obliquity_deg: float = 20.0  # array axes further than this from a patient axis: oblique
    max_gas_median_hu: float = -960.0  # "lungs" darker than this are gas (bowel, phantoms), not lung
    pv_dense_hu: float = -300.0  # tissue side of a partial-volume edge
    dome_mm: float = 20.0  # how high tissue standing on the diaphragm is followed up into the lung outline
    pv_sheet_mm: tuple[float, float] = (8.0, 4.0)  # GGO this thin on the lung wall (along z, in-plane) is partial volume
    mirror_ratio: float = 0.45  # one lung's region under this share of the other's mirrored: it has lost its outline
    mirror_skip_frac: float = 0.15  # not in this share of the lungs' height at the base and the apex (uneven domes)
    wall_bins: int = 72  # sectors round the body's centre in which the chest wall's depth is compared
    wall_tol_mm: float = 10.0  # a lung this much deeper from the skin than the mirrored other lung has left the wall
    wall_max_mm: float = 80.0  # the chest wall is never thicker (skin depth is followed this far)
    wall_skip_deg: tuple[float, float, float] = (35.0, 30.0, 72.0)  # anterior, posterior half-angles, the heart's sector left of front
    bone_hu: float = 150.0  # bone on the coarse grid (ribs, the vertebral body)
    rib_z_mm: float = 12.0  # ribs are looked for this far above and below (they run obliquely)
    medial_tol_mm: tuple[float, float] = (15.0, 30.0)  # right, left: a medial border this much further out than the other's mirrored is lost
    solid_hu: float = -60.0  # above this a coarse voxel is solid (lesion, vessel, heart), not fat or air
    solid_frac: float = 0.4  # a lost medial border is seeded only across this share of fat or air at most
    medial_ahead_mm: float = 15.0  # ... in the rows from this far in front of the vertebral body back (behind the heart)
    spine_band_frac: float = 0.06  # the vertebral body lies within this share of the body's width of its midline
    heart_narrow_mm: float = 10.0  # the heart, grown up from below the lung bases, narrows one coarse voxel per this height
    bay_mm: tuple[float, float, float] = (40.0, 85.0, 20.0)  # a left medial border stepping out this deep (3rd) between rows this far apart wraps a lesion
    cavity_slab_mm: float = 4.0  # the per-slice lung hull uses the aerated lung this far above and below


PARAMS = Params()
