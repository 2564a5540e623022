"""Loading an exported network once: its files, its version digest, the module on its device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..registry import ModelError
from .config import ModelConfig, locate, read_config
from .inference import ScriptedAnalyzer

__all__ = ["canonical_json", "file_sha256", "load", "model_version"]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(cfg: ModelConfig) -> bytes:
    """A stable encoding of every field of ``cfg`` that can change the outputs (all but name, version and weights)."""
    d = {k: v for k, v in cfg.__dict__.items() if k not in ("name", "version", "weights")}
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode("utf-8")


def model_version(cfg: ModelConfig, weights_sha256: str) -> str:
    """``f"{name}-{version}-{digest[:12]}"``: the digest covers the weights and every output-changing field.

    Parameters
    ----------
    cfg : ModelConfig
        The parsed ``model.json``.
    weights_sha256 : str
        Hex SHA-256 of the weights file.

    Returns
    -------
    str
        Changes whenever the weights or :func:`canonical_json` do.
    """
    h = hashlib.sha256()
    h.update(bytes.fromhex(weights_sha256))
    h.update(canonical_json(cfg))
    return f"{cfg.name}-{cfg.version}-{h.hexdigest()[:12]}"


def _load_module(cfg: ModelConfig, weights: Path, dev: torch.device) -> Any:
    try:
        if cfg.format == "torchscript":
            module = torch.jit.load(str(weights), map_location=dev)
            module.eval()
            return module
        program = torch.export.load(str(weights))
        if dev.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, dev)
        return program.module()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        raise ModelError(
            "bad_model_weights", f"cannot load {weights.name} as format {cfg.format!r}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc


def load(path: str | Path, device: str | torch.device = "auto") -> ScriptedAnalyzer:
    """Load an exported model onto ``device`` and check it with one probe forward pass.

    Prefer :func:`model.registry.get`, which caches the result per process.

    Parameters
    ----------
    path : str or pathlib.Path
        See :func:`model.exported.config.locate`.
    device : str or torch.device
        Where the weights live and inference runs.

    Returns
    -------
    ScriptedAnalyzer

    Raises
    ------
    ModelError
        ``model_not_found``, ``bad_model_config``, ``bad_model_weights``, or
        ``bad_model_output`` when the probe's output does not match the
        declared classes and the input's spatial shape.
    """
    dev = resolve_device(device)
    config_path, weights_path = locate(path)
    cfg = read_config(config_path)
    weights_sha256 = file_sha256(weights_path)
    analyzer = ScriptedAnalyzer(
        name=cfg.name,
        version=model_version(cfg, weights_sha256),
        config=cfg,
        module=_load_module(cfg, weights_path, dev),
        device=dev,
        weights_sha256=weights_sha256,
    )
    analyzer.probe()
    return analyzer
