"""ctfleet: the shared kernel (settings, contracts, DICOM, AWS adapters, CLI, local stack)."""

__version__ = "0.1.0"
