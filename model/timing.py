"""Step timings that mean something on a GPU (the device is synchronised before each reading)."""

from __future__ import annotations

import time

import torch

__all__ = ["Stopwatch"]


class Stopwatch:
    """Records the seconds each named step took, in order.

    Parameters
    ----------
    device : torch.device
        CUDA work is asynchronous: a lap synchronises the device first, so the
        time lands on the step that did the work.
    start : float, optional
        ``time.perf_counter()`` value the first lap counts from (default: now).
    cumulative : bool
        Record each lap as the seconds since ``start`` instead of since the last lap.
    """

    def __init__(self, device: torch.device, start: float | None = None, *, cumulative: bool = False) -> None:
        self.device = device
        self.start = time.perf_counter() if start is None else start
        self.cumulative = cumulative
        self._last = self.start
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Record the step ``name`` as ending now."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = round(now - (self.start if self.cumulative else self._last), 4)
        self._last = now

    def record_total(self) -> None:
        """Record ``"total"``: the seconds since ``start``."""
        self.timings["total"] = round(time.perf_counter() - self.start, 4)
