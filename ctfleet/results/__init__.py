"""What a finished analysis writes: the result files (labels, report, overlays) and the DICOM SEG.

May import: :mod:`ctfleet.contracts`, :mod:`model`, nibabel, Pillow, highdicom,
pydicom. Never boto3: the worker uploads what these functions return.
"""
