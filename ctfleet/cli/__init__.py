"""The one console script, ``ctfleet``, and the uploader's HTTP client (outer ring).

:mod:`.main` builds the parser apart from :func:`main` (tests call both); each
command's work lives beside it (:mod:`.analyze`, :mod:`.deid`, ...).

May import: anything (it composes the kernel, the handlers, the worker and the local stack).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
