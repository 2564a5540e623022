"""DICOM in memory, up to the de-identified study: the pure core of ingest.

Transfer syntaxes, reading, series grouping and choice, the HU volume, pixel
safety, de-identification (PS3.15 Annex E) and :func:`prepare.prepare_study`,
which ties them together for one upload. Bytes in, objects out: no files but
those :mod:`.files` reads for ``ctfleet analyze``, no AWS.

May import: :mod:`ctfleet.contracts`, :mod:`ctfleet.errors`, :mod:`model.volume`,
pydicom and its codecs, numpy. Never boto3, never torch.
"""

from .dicom import choose, choose_series, dataset_to_bytes, group_series, read_dataset, volume_from_series
from .files import LoadedStudy, load_study
from .prepare import PreparedStudy, prepare_study

__all__ = ["LoadedStudy", "PreparedStudy", "choose", "choose_series", "dataset_to_bytes", "group_series",
           "load_study", "prepare_study", "read_dataset", "volume_from_series"]
