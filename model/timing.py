"""Step timings that mean something on a GPU (the device is synchronised before each reading)."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """Records the seconds each named step took, in order.

    Parameters
    ----------
    device : torch.device
        CUDA work is asynchronous: a lap synchronises the device first, so the
        time lands on the step that did the work.
    start : float, optional
        ``time.perf_counter()`` value the first lap counts from (default: now).
    """

    def __init__(self, device: torch.device, start: float | None = None) -> None:
        self.device = device
        self.start = time.perf_counter() if start is None else start
        self._last = self.start
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 4)
        self._last = now
