"""The built-in analyzer gives the same answer on the GPU (float16) as on the CPU (float32).

Skipped without CUDA. On a GPU machine: the real chest CT and the HIGH phantom, labels compared
per label by Dice and the score and per-zone involvement compared directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctfleet.dev.phantom import from_preset
from model import analyze
from model.labels import Label
from model.volume import Volume

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def volumes() -> dict[str, Volume]:
    out = {}
    for name in ("high", "clean"):
        p = from_preset(name)
        out[f"phantom-{name}"] = Volume.from_spacing(p.hu, p.spacing_mm)
    return out


def real_volume(real_ct_dir) -> Volume:
    from ctfleet.intake.files import load_study

    return load_study(real_ct_dir).volume


@pytest.mark.parametrize("which", ["real", "phantom-high", "phantom-clean"])
def test_cpu_and_cuda_agree(which: str, request) -> None:
    volume = real_volume(request.getfixturevalue("real_ct_dir")) if which == "real" else volumes()[which]
    cpu, gpu = analyze(volume, "cpu"), analyze(volume, "cuda")
    assert gpu.report["device"].startswith("cuda") and cpu.report["device"] == "cpu"
    for code in (Label.LUNG, Label.GGO, Label.CONSOLIDATION):
        a, b = cpu.labels == code, gpu.labels == code
        if a.sum() + b.sum() > 1000:  # a label of a few voxels has no meaningful Dice
            assert dice(a, b) >= 0.99, f"label {code}: Dice {dice(a, b):.4f}"
    assert abs(cpu.report["score"] - gpu.report["score"]) <= 0.01
    assert cpu.report["triage_level"] == gpu.report["triage_level"]
    for zone, pct in cpu.report["involvement_pct"]["zones"].items():
        assert abs(pct - gpu.report["involvement_pct"]["zones"][zone]) <= 1.0, zone
