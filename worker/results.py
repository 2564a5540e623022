"""Write one analysis's result files to ``results/{facility}/{study}/{model_version}/``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ctfleet.aws.objects import Objects
from ctfleet.contracts import results_prefix

Render = Callable[..., dict[str, bytes]]


class ResultWriter:
    """Renders an analysis and uploads its files; results are overwritten in place (idempotent).

    Parameters
    ----------
    objects : Objects
        The results bucket.
    render : callable
        ``render(analysis, volume, source_datasets=...) -> {name: bytes}``
        (:func:`ctfleet.results.files.render`).
    """

    def __init__(self, objects: Objects, render: Render) -> None:
        self.objects = objects
        self.render = render

    def write(self, analysis: Any, volume: Any, source_datasets: Sequence[Any], *, facility: str, study_key: str,
              model_version: str) -> tuple[str, list[str]]:
        """Render and upload; returns the prefix and the keys written."""
        files = self.render(analysis, volume, source_datasets=source_datasets)
        prefix = results_prefix(facility, study_key, model_version)
        keys = [prefix + name for name in files]
        self.objects.put_many(zip(keys, files.values()))
        return prefix, keys
