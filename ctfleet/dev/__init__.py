"""Developer tools (outer ring): ``make bench``, ``make validate``, the chest phantoms and the
synthetic DICOM writer the demo and the tests use.

May import: anything. Nothing in the kernel or the shells imports this package,
except the demo and tests.
"""
