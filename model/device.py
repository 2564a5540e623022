"""Which torch device an analyzer runs on: the one resolver every model module uses."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device", "use_all_cores"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` named by ``device``.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:1"``...

    Returns
    -------
    torch.device
        ``"auto"`` gives ``cuda`` or ``cpu`` as named; an explicit CUDA device
        without an index gets the current one, so ``"cuda"`` and ``"cuda:0"``
        resolve to the same device (and the same analyzer cache entry).
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def use_all_cores(device: torch.device) -> None:
    """On CPU, let torch use every core of the machine.

    torch defaults to the physical cores; the worker owns the machine, so the
    built-in analyzer uses all of it. Does nothing for other devices.

    Parameters
    ----------
    device : torch.device
        The device the analysis runs on.
    """
    if device.type != "cpu":
        return
    n = os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
