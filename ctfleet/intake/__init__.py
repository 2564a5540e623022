"""DICOM in memory, up to the de-identified study: the pure core of ingest.

Bytes in, objects out: no files but those :mod:`.files` reads for
``ctfleet analyze``, no AWS. Unusable input raises :class:`~ctfleet.errors.BadInput`
with a reason code of :class:`ctfleet.contracts.Reason`; messages never carry
header values.

Modules, each named for its role, in the order a file goes through them:

- :mod:`.syntaxes`: the transfer syntaxes read, which decoders are installed, decoding one frame;
- :mod:`.headers`: header values read tolerantly (a value that does not convert counts as absent);
- :mod:`.reading`: one Part 10 file to a checked :class:`pydicom.Dataset` (:func:`read_dataset`);
- :mod:`.geometry`: slice orientation and the regular-grid check of one stack, from headers only;
- :mod:`.series`: data sets grouped into stacks, each ordered along its normal (:func:`group_series`);
- :mod:`.choice`: the stack to analyze, why, and what else was there (:func:`choose`, :func:`choose_series`);
- :mod:`.volume`: one stack as a HU :class:`~model.volume.Volume` (:func:`volume_from_series`);
- :mod:`.pixels`: pixel safety, the series whose pixels may show identity;
- :mod:`.deid`: de-identification, PS3.15 Annex E;
- :mod:`.writing`: a data set back to Part 10 bytes (:func:`dataset_to_bytes`);
- :mod:`.prepare`: one upload from its bytes to a de-identified study (:func:`prepare_study`);
- :mod:`.files`: one study from a DICOM folder or a NIfTI file on disk (:func:`load_study`).

Synthetic test series are written by ``ctfleet.dev.synthetic``, outside the kernel.

May import: :mod:`ctfleet.contracts`, :mod:`ctfleet.errors`, :mod:`model.volume`,
pydicom and its codecs, numpy (and nibabel, in :mod:`.files`). Never boto3, never torch,
never :mod:`ctfleet.dev`.
"""

from .choice import choose, choose_series
from .files import LoadedStudy, load_study
from .prepare import PreparedStudy, prepare_study
from .reading import read_dataset
from .series import group_series
from .volume import volume_from_series
from .writing import dataset_to_bytes

__all__ = ["LoadedStudy", "PreparedStudy", "choose", "choose_series", "dataset_to_bytes", "group_series",
           "load_study", "prepare_study", "read_dataset", "volume_from_series"]
