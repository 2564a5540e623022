"""model.registry / model.exported / ctfleet.aws.model_store: analyzers by name, path and s3:// URI.

The "customer model" is built here: a small network whose weights are set by
hand (HU thresholds plus enclosure by pooling), exported with TorchScript and
with torch.export, described by a model.json, and loaded the way the worker does.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from ctfleet.dev.phantom import from_preset
from model import Volume
from model.registry import ModelError, clear_cache, get, register
from model.analysis import analysis_from_labels
from model.exported.loader import file_sha256

CLASSES = {"0": "background", "1": "lung", "2": "ggo", "3": "consolidation"}
REPORT_KEYS = {
    "model_version", "shape", "spacing_mm", "lung_volume_ml", "lesion_volume_ml", "involvement_pct",
    "severity_score", "score", "triage_level", "timings_s", "flags",
}


# -- the hand-made networks ---------------------------------------------------------------


def _enclosed(t: torch.Tensor, dim: int) -> torch.Tensor:
    """1 where ``t`` has a 1 somewhere before and somewhere after (inclusive) along ``dim``."""
    c = torch.cumsum(t, dim)
    total = c.narrow(dim, t.shape[dim] - 1, 1)
    return ((c > 0) & (total - c + t > 0)).float()


def _both_sides(m: torch.Tensor, dim: int, reach: int) -> torch.Tensor:
    """1 where ``m`` has a 1 within ``reach`` voxels strictly before and strictly after along ``dim``."""
    n = m.shape[dim]
    if dim == 2:
        mx = F.max_pool3d(F.pad(m, [0, 0, 0, 0, reach, reach]), kernel_size=[reach, 1, 1], stride=1)
    elif dim == 3:
        mx = F.max_pool3d(F.pad(m, [0, 0, reach, reach, 0, 0]), kernel_size=[1, reach, 1], stride=1)
    else:
        mx = F.max_pool3d(F.pad(m, [reach, reach, 0, 0, 0, 0]), kernel_size=[1, 1, reach], stride=1)
    return mx.narrow(dim, 0, n) * mx.narrow(dim, reach + 1, n)


class ThresholdNet(nn.Module):
    """A deterministic stand-in for a trained network, input min-max normalised over [-1000, 200] HU.

    A 1x1x1 convolution with sigmoid thresholds HU at -400 (air), -750/-300
    (ground glass) and +100; air and ground glass inside the body outline are
    lung and GGO; dense voxels with aerated lung within ``reach`` voxels on both
    sides along two of three axes are consolidation. Logits ``(N, 4, Z, Y, X)``.
    """

    def __init__(self, reach: int = 16, lo: float = -1000.0, hi: float = 200.0) -> None:
        super().__init__()
        self.reach = reach
        self.conv = nn.Conv3d(1, 4, 1)
        with torch.no_grad():
            self.conv.weight.fill_(200.0)
            self.conv.bias.copy_(-200.0 * (torch.tensor([-400.0, -750.0, -300.0, 100.0]) - lo) / (hi - lo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.conv(x)) > 0.5
        tissue, ge_ggo, ge_dense, ge_max = s[:, 0:1], s[:, 1:2], s[:, 2:3], s[:, 3:4]
        t = tissue.float()
        inside = _enclosed(t, 3) * _enclosed(t, 4)
        lung = (~tissue).float() * inside
        ggo = (ge_ggo & ~ge_dense).float() * inside
        aerated = torch.clamp(lung + ggo, 0.0, 1.0)
        votes = _both_sides(aerated, 2, self.reach) + _both_sides(aerated, 3, self.reach) + _both_sides(aerated, 4, self.reach)
        cons = (ge_dense & ~ge_max).float() * (votes >= 2).float() * inside
        ggo = ggo * (1.0 - cons)
        return 10.0 * torch.cat([torch.full_like(lung, 0.5), lung, 2.0 * ggo, 3.0 * cons], dim=1)


class PointwiseNet(nn.Module):
    """Voxel-wise HU thresholds, no context: a sliding window must reproduce the whole-volume output."""

    def __init__(self, lo: float = -1000.0, hi: float = 200.0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.fill_(50.0)
            self.conv.bias.copy_(-50.0 * (torch.tensor([-400.0, -750.0, -300.0]) - lo) / (hi - lo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.conv(x))
        return torch.cat([0.3 * s[:, 2:3] + 0.01, 1.0 - s[:, 0:1], s[:, 1:2] * (1.0 - s[:, 2:3]), 0.5 * s[:, 2:3]], dim=1)


def _config(fmt: str, **input_: Any) -> dict[str, Any]:
    return {
        "format": fmt,
        "name": "acme-lung",
        "version": "1.0.0",
        "input": {"hu_window": [-1000, 200], "normalize": "minmax", **input_},
        "output": {"kind": "logits", "classes": CLASSES},
    }


def _write(folder: Path, net_file: str, cfg: dict[str, Any]) -> Path:
    (folder / "model.json").write_text(json.dumps(cfg))
    return folder / net_file


@pytest.fixture(scope="module")
def torchscript_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ts")
    torch.jit.save(torch.jit.script(ThresholdNet().eval()), str(d / "model.pt"))
    _write(d, "model.pt", _config("torchscript"))
    return d


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whole-volume torch.export program with dynamic spatial dims."""
    d = tmp_path_factory.mktemp("export")
    dims = {2: torch.export.Dim("z", min=8, max=2048), 3: torch.export.Dim("y", min=8, max=2048),
            4: torch.export.Dim("x", min=8, max=2048)}
    program = torch.export.export(ThresholdNet().eval(), (torch.rand(1, 1, 24, 40, 40),), dynamic_shapes={"x": dims})
    torch.export.save(program, str(d / "net.pt2"))
    _write(d, "net.pt2", _config("export"))
    return d


@pytest.fixture(scope="module")
def phantoms() -> dict[str, Volume]:
    return {name: Volume.from_spacing(from_preset(name).hu, from_preset(name).spacing_mm) for name in ("clean", "high")}


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


# -- registry -----------------------------------------------------------------------------


def test_public_api_unchanged() -> None:
    from model import MODEL_VERSION, Analysis, analyze  # noqa: F401 - the import is the test

    assert MODEL_VERSION == model.analysis.MODEL_VERSION
    assert model.analyze is model.analysis.analyze


def test_default_is_builtin(phantoms: dict[str, Volume]) -> None:
    a = get("default", "cpu")
    assert isinstance(a, model.Analyzer)
    assert (a.name, a.version) == ("default", model.MODEL_VERSION)
    assert get("default", "cpu") is a  # built once per process and device
    v = phantoms["clean"]
    assert np.array_equal(a(v, "cpu").labels, model.analyze(v, "cpu").labels)


def test_register_and_unknown() -> None:
    calls: list[torch.device] = []

    def factory(device: torch.device) -> model.Analyzer:
        calls.append(device)
        return model.BuiltinAnalyzer(name="mine", version="mine-1")

    register("mine-test", factory, replace=True)
    assert get("mine-test", "cpu") is get("mine-test", "cpu")
    assert calls == [torch.device("cpu")]
    with pytest.raises(ModelError) as err:
        register("mine-test", factory)
    assert err.value.reason == "bad_model_name"
    with pytest.raises(ModelError) as err:
        get("no-such-model", "cpu")
    assert err.value.reason == "unknown_model"
    assert isinstance(err.value, ValueError)


# -- scripted models ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["torchscript_dir", "export_dir"])
def test_scripted_report_on_phantoms(which: str, request: pytest.FixtureRequest, phantoms: dict[str, Volume]) -> None:
    folder: Path = request.getfixturevalue(which)
    a = get(folder, "cpu")
    assert get(folder, "cpu") is a  # weights loaded once
    for preset, level in (("clean", "LOW"), ("high", "HIGH")):
        v = phantoms[preset]
        result = a(v, "cpu")
        assert result.labels.dtype == np.uint8 and result.labels.shape == v.shape
        assert set(np.unique(result.labels)) <= {0, 1, 2, 3}
        report = result.report
        assert REPORT_KEYS <= set(report)
        assert report["model_version"] == a.version and report["analyzer"] == "acme-lung"
        assert set(report["involvement_pct"]["zones"]) == set(model.ZONES)
        assert report["triage_level"] == level, report
        assert 1500 < report["lung_volume_ml"]["total"] < 2600
        assert min(report["lung_volume_ml"]["left"], report["lung_volume_ml"]["right"]) > 700
        truth = from_preset(preset).truth
        assert (result.labels == truth).mean() > 0.99
        assert "coronal" in result.overlays and any(k.startswith("axial_") for k in result.overlays)
    json.dumps(report)  # serialisable


def test_torchscript_and_export_agree(torchscript_dir: Path, export_dir: Path, phantoms: dict[str, Volume]) -> None:
    v = phantoms["high"]
    a, b = get(torchscript_dir, "cpu")(v), get(export_dir, "cpu")(v)
    assert np.array_equal(a.labels, b.labels)


def test_deterministic(torchscript_dir: Path, phantoms: dict[str, Volume]) -> None:
    v = phantoms["high"]
    first = get(torchscript_dir, "cpu")(v, "cpu")
    clear_cache()
    again = get(torchscript_dir / "model.pt", "cpu")(v, "cpu")  # by weights file this time
    assert np.array_equal(first.labels, again.labels)
    drop = {"timings_s"}
    assert {k: x for k, x in first.report.items() if k not in drop} == {k: x for k, x in again.report.items() if k not in drop}


def test_orientation_independent(torchscript_dir: Path, phantoms: dict[str, Volume]) -> None:
    """A volume stored flipped (X toward the patient's right) gives the flipped labels, same report."""
    v = phantoms["high"]
    affine = v.affine.copy()
    affine[:3, 0] = -affine[:3, 0]
    affine[:3, 3] = v.affine[:3, 3] + v.affine[:3, 0] * (v.shape[2] - 1)
    flipped = Volume(hu=v.hu[:, :, ::-1].copy(), spacing_mm=v.spacing_mm, affine=affine)
    a = get(torchscript_dir, "cpu")
    r1, r2 = a(v), a(flipped)
    assert np.array_equal(r1.labels[:, :, ::-1], r2.labels)
    assert r1.report["lung_volume_ml"] == r2.report["lung_volume_ml"]


def test_version_hash(tmp_path: Path, torchscript_dir: Path) -> None:
    a = get(torchscript_dir, "cpu")
    digest = a.version.rsplit("-", 1)[1]
    assert a.version.startswith("acme-lung-1.0.0-") and len(digest) == 12
    assert a.weights_sha256 == file_sha256(torchscript_dir / "model.pt")
    # Same weights, same config elsewhere -> same version.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.pt").write_bytes((torchscript_dir / "model.pt").read_bytes())
    (copy / "model.json").write_text((torchscript_dir / "model.json").read_text())
    assert get(copy, "cpu").version == a.version
    # Other weights -> other version.
    other = tmp_path / "other"
    other.mkdir()
    torch.jit.save(torch.jit.script(ThresholdNet(reach=12).eval()), str(other / "model.pt"))
    _write(other, "model.pt", _config("torchscript"))
    assert get(other, "cpu").version != a.version
    # Same weights, other preprocessing -> other version (outputs could change).
    cfg = _config("torchscript")
    cfg["input"]["hu_window"] = [-1000, 250]
    _write(copy, "model.pt", cfg)
    assert get(copy, "cpu").version != a.version


def test_sliding_window_matches_whole_volume(tmp_path: Path, phantoms: dict[str, Volume]) -> None:
    """A static-shape export used through the declared patch gives the whole-volume result."""
    patch = [16, 48, 48]
    whole, sliding = tmp_path / "whole", tmp_path / "sliding"
    whole.mkdir()
    sliding.mkdir()
    torch.jit.save(torch.jit.script(PointwiseNet().eval()), str(whole / "model.pt"))
    _write(whole, "model.pt", {**_config("torchscript"), "output": {"kind": "probabilities", "classes": CLASSES}})
    program = torch.export.export(PointwiseNet().eval(), (torch.rand(1, 1, *patch),))  # static shape
    torch.export.save(program, str(sliding / "model.pt2"))
    _write(sliding, "model.pt2", {**_config("export", patch=patch, overlap=0.25),
                                  "output": {"kind": "probabilities", "classes": CLASSES}})
    v = phantoms["high"]
    a, b = get(whole, "cpu")(v), get(sliding, "cpu")(v)
    assert (a.labels == b.labels).mean() > 0.9999
    # Batched windows through TorchScript (any batch size) give the same again.
    _write(whole, "model.pt", {**_config("torchscript", patch=patch, overlap=0.5, batch=3),
                               "output": {"kind": "probabilities", "classes": CLASSES}})
    # (Blending identical windows can move a probability by an ulp: allow the odd tie to flip.)
    assert (get(whole, "cpu")(v).labels == a.labels).mean() > 0.9999
    # The static program was exported for batch 1: a batch of 3 is refused at load time.
    _write(sliding, "model.pt2", {**_config("export", patch=patch, batch=3),
                                  "output": {"kind": "probabilities", "classes": CLASSES}})
    with pytest.raises(ModelError) as err:
        get(sliding, "cpu")
    assert err.value.reason == "bad_model_output" and "batch" in str(err.value)
    # Without the patch the static program cannot run: a clear load-time error.
    _write(sliding, "model.pt2", {**_config("export"), "output": {"kind": "probabilities", "classes": CLASSES}})
    with pytest.raises(ModelError) as err:
        get(sliding, "cpu")
    assert err.value.reason == "bad_model_output" and "patch" in str(err.value)


def test_resampled_grid(tmp_path: Path, torchscript_dir: Path, phantoms: dict[str, Volume]) -> None:
    """A model declaring another voxel size runs there; labels come back on the input grid."""
    d = tmp_path / "resampled"
    d.mkdir()
    (d / "model.pt").write_bytes((torchscript_dir / "model.pt").read_bytes())
    _write(d, "model.pt", _config("torchscript", spacing_mm=[2.0, 1.5, 1.5]))
    v = phantoms["clean"]
    r = get(d, "cpu")(v)
    ref = get(torchscript_dir, "cpu")(v)
    assert r.labels.shape == v.shape and r.labels.dtype == np.uint8
    assert ((r.labels > 0) == (ref.labels > 0)).mean() > 0.98
    assert abs(r.report["lung_volume_ml"]["total"] - ref.report["lung_volume_ml"]["total"]) < 0.1 * ref.report["lung_volume_ml"]["total"]


def test_analysis_from_labels_matches_builtin(phantoms: dict[str, Volume]) -> None:
    """The shared report code gives the built-in analyzer's numbers for its own labels."""
    v = phantoms["high"]
    builtin = model.analyze(v, "cpu")
    shared = analysis_from_labels(v, builtin.labels, "cpu", model_version="x")
    for key in ("lesion_volume_ml", "triage_level", "flags"):
        assert shared.report[key] == builtin.report[key], key
    # The built-in measures on its 2 mm work grid, the shared path on the input grid.
    assert abs(shared.report["lung_volume_ml"]["total"] - builtin.report["lung_volume_ml"]["total"]) < 20
    assert abs(shared.report["score"] - builtin.report["score"]) < 0.02
    with pytest.raises(ValueError):
        analysis_from_labels(v, builtin.labels[:-1], "cpu", model_version="x")


def test_not_a_chest(torchscript_dir: Path) -> None:
    v = Volume.from_spacing(np.full((32, 64, 64), 40.0, dtype=np.float32), (2.5, 2.0, 2.0))
    r = get(torchscript_dir, "cpu")(v)
    assert r.report["flags"] == ["not_a_chest"] and r.report["triage_level"] == "LOW"
    assert not r.labels.any()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c.update(format="onnx"), "format"),
        (lambda c: c.update(name="bad/name"), "name"),
        (lambda c: c["input"].pop("hu_window"), "hu_window"),
        (lambda c: c["input"].update(hu_window=[200, -1000]), "hu_window"),
        (lambda c: c["input"].update(normalize="robust"), "normalize"),
        (lambda c: c["input"].update(patch=[16, 0, 48]), "patch"),
        (lambda c: c["input"].update(spacing_mm=[1, -1, 1]), "spacing_mm"),
        (lambda c: c["output"].update(kind="sigmoid"), "kind"),
        (lambda c: c["output"].update(classes={"0": "background", "2": "lung"}), "classes"),
        (lambda c: c["output"].update(classes={"0": "background", "1": "tumour"}), "classes"),
        (lambda c: c["output"].update(classes={"0": "background", "1": "ggo"}), "lung"),
        (lambda c: c.update(weights="../x.pt"), "weights"),
    ],
)
def test_bad_config(tmp_path: Path, torchscript_dir: Path, mutate: Any, needle: str) -> None:
    (tmp_path / "model.pt").write_bytes((torchscript_dir / "model.pt").read_bytes())
    cfg = _config("torchscript")
    mutate(cfg)
    _write(tmp_path, "model.pt", cfg)
    with pytest.raises(ModelError) as err:
        get(tmp_path, "cpu")
    assert err.value.reason == "bad_model_config" and needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_json_and_files(tmp_path: Path, torchscript_dir: Path, export_dir: Path) -> None:
    (tmp_path / "model.pt").write_bytes((torchscript_dir / "model.pt").read_bytes())
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError) as err:
        get(tmp_path, "cpu")
    assert err.value.reason == "bad_model_config"
    # Format mismatch: an exported program declared as TorchScript.
    (tmp_path / "model.pt").write_bytes((export_dir / "net.pt2").read_bytes())
    _write(tmp_path, "model.pt", _config("torchscript"))
    with pytest.raises(ModelError) as err:
        get(tmp_path, "cpu")
    assert err.value.reason == "bad_model_weights"
    # Wrong class count: the probe catches it at load time.
    _write(tmp_path, "model.pt", {**_config("torchscript"), "output": {"kind": "logits", "classes": {"0": "background", "1": "lung"}}})
    (tmp_path / "model.pt").write_bytes((torchscript_dir / "model.pt").read_bytes())
    with pytest.raises(ModelError) as err:
        get(tmp_path, "cpu")
    assert err.value.reason == "bad_model_output"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError) as err:
        get(empty, "cpu")
    assert err.value.reason == "model_not_found"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scripted_on_cuda(torchscript_dir: Path, export_dir: Path, phantoms: dict[str, Volume]) -> None:
    v = phantoms["high"]
    cpu = get(torchscript_dir, "cpu")(v)
    for folder in (torchscript_dir, export_dir):
        gpu = get(folder, "cuda")(v, "cuda")
        assert gpu.report["device"].startswith("cuda")
        assert (gpu.labels == cpu.labels).mean() > 0.999
        assert gpu.report["triage_level"] == cpu.report["triage_level"]


# -- ctfleet.aws.model_store.resolve: names, paths and a real moto server ---------------------------


def test_resolve_names_and_paths(tmp_path: Path, torchscript_dir: Path) -> None:
    from ctfleet.aws.model_store import resolve

    assert resolve("default", cache_dir=tmp_path).version == model.MODEL_VERSION
    assert resolve(str(torchscript_dir), cache_dir=tmp_path, device="cpu") is get(torchscript_dir, "cpu")
    with pytest.raises(ModelError) as err:
        resolve("s3://bucket/model.pt", cache_dir=tmp_path)
    assert err.value.reason == "bad_model_uri"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
    finally:
        server.stop()


def test_resolve_s3(tmp_path: Path, s3_client: Any, torchscript_dir: Path, export_dir: Path, phantoms: dict[str, Volume]) -> None:
    from ctfleet.aws.model_store import resolve

    s3_client.create_bucket(Bucket="models")
    s3_client.put_object(Bucket="models", Key="acme/v1/model.pt", Body=(torchscript_dir / "model.pt").read_bytes())
    s3_client.put_object(Bucket="models", Key="acme/v1/model.json", Body=(torchscript_dir / "model.json").read_bytes())
    s3_client.put_object(Bucket="models", Key="acme/v2/net.pt2", Body=(export_dir / "net.pt2").read_bytes())
    s3_client.put_object(Bucket="models", Key="acme/v2/model.json", Body=(export_dir / "model.json").read_bytes())
    cache = tmp_path / "cache"

    a = resolve("s3://models/acme/v1/model.pt", s3_client=s3_client, cache_dir=cache, device="cpu")
    assert a.version == get(torchscript_dir, "cpu").version  # same bytes, same version
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and sorted(p.name for p in (cache / entries[0]).iterdir()) == ["model.json", "model.pt"]
    # Again, by the folder prefix and by model.json: the cached copy, the cached analyzer.
    assert resolve("s3://models/acme/v1/", s3_client=s3_client, cache_dir=cache, device="cpu") is a
    assert resolve("s3://models/acme/v1/model.json", s3_client=s3_client, cache_dir=cache, device="cpu") is a
    assert len(list(cache.iterdir())) == 1
    b = resolve("s3://models/acme/v2/", s3_client=s3_client, cache_dir=cache, device="cpu")
    assert np.array_equal(a(phantoms["clean"]).labels, b(phantoms["clean"]).labels)
    # New weights under the same key: new ETag, new cache entry, new version.
    torch.jit.save(torch.jit.script(ThresholdNet(reach=12).eval()), str(tmp_path / "new.pt"))
    s3_client.put_object(Bucket="models", Key="acme/v1/model.pt", Body=(tmp_path / "new.pt").read_bytes())
    c = resolve("s3://models/acme/v1/model.pt", s3_client=s3_client, cache_dir=cache, device="cpu")
    assert c.version != a.version
    with pytest.raises(ModelError) as err:
        resolve("s3://models/nothing/model.pt", s3_client=s3_client, cache_dir=cache)
    assert err.value.reason == "model_not_found"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left
