"""One study from files on disk to a volume: what ``ctfleet analyze`` reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput

if TYPE_CHECKING:
    from model.volume import Volume


@dataclass(frozen=True)
class LoadedStudy:
    """A study read from disk: its volume and, for DICOM, the slices it came from."""

    volume: "Volume"
    source_datasets: tuple[Any, ...] | None  # the DICOM series the volume came from (None for NIfTI)


def load_study(path: Path) -> LoadedStudy:
    """A volume (and its DICOM series) from a DICOM folder (searched recursively) or a NIfTI file.

    For a folder, the best axial CT series is chosen (see :func:`ctfleet.intake.choice.choose_series`).

    Raises
    ------
    BadInput
        With a reason code when the input cannot give a CT volume.
    """
    from ctfleet.intake.volume import checked_volume

    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        import numpy as np

        try:
            img = nib.load(str(path))
            if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
                raise TypeError(type(img).__name__)
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds
            raise BadInput(Reason.NOT_NIFTI, f"cannot read {path.name} as NIfTI") from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise BadInput(Reason.BAD_SHAPE, f"expected a 3-D image, got {data.ndim} dimensions")
        zooms = img.header.get_zooms()[:3]
        # nibabel's array is (i, j, k) = (X, Y, Z); the model wants (Z, Y, X).
        volume = checked_volume(np.ascontiguousarray(data.transpose(2, 1, 0)),
                                (float(zooms[2]), float(zooms[1]), float(zooms[0])), img.affine)
        return LoadedStudy(volume, None)
    if not path.is_dir():
        raise BadInput(Reason.NO_INPUT, f"{path} is neither a folder of DICOM files nor a .nii/.nii.gz file")
    from ctfleet.intake.choice import choose_series
    from ctfleet.intake.reading import read_dataset, repair_from_meta
    from ctfleet.intake.series import group_series
    from ctfleet.intake.volume import volume_from_series

    datasets = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            ds = read_dataset(file.read_bytes(), name=file.name)
            repair_from_meta(ds)
        except BadInput:
            continue  # DICOMDIR, notes, thumbnails, instances nothing names: not images of the study
        datasets.append(ds)
    if not datasets:
        raise BadInput(Reason.NOT_DICOM, f"no readable DICOM image under {path}")
    series = choose_series(group_series(datasets))
    return LoadedStudy(volume_from_series(list(series.datasets)), tuple(series.datasets))
