"""Writing: a data set back to the bytes of a DICOM Part 10 file, in memory."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode a data set as a DICOM Part 10 file in memory.

    Parameters
    ----------
    ds : pydicom.Dataset
        Must carry ``file_meta`` with a TransferSyntaxUID (as data sets from
        :func:`~ctfleet.intake.reading.read_dataset`,
        :func:`~ctfleet.intake.deid.deidentify` and the synthetic series of
        ``ctfleet.dev.synthetic`` do).

    Returns
    -------
    bytes
        Preamble, ``DICM``, file meta and data set, encoded in the file meta's
        transfer syntax (``enforce_file_format=True``).
    """
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
