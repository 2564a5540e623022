"""Resolve ``--model`` / the worker's model setting to a loaded analyzer.

``resolve(name_or_uri, s3_client=..., cache_dir=...)`` accepts:

* ``"default"`` or any name registered with :func:`model.registry.register`;
* a local path: a weights file with ``model.json`` beside it, a ``model.json``,
  or a folder holding one (see :mod:`model.exported`);
* ``s3://bucket/key``: ``key`` is a weights file (``model.json`` beside it), a
  ``model.json``, or a folder prefix (``.../`` holding ``model.json``). Both
  files are downloaded with the given boto3 client into
  ``cache_dir/<sha256 of bucket, keys and ETags>/`` once, then loaded from there.

Nothing is fetched from anywhere but the given S3 client, and the model is
loaded once per process and device (the registry caches it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.registry import Analyzer, ModelError, available, get
from model.exported.config import CONFIG_NAME, WEIGHT_SUFFIXES, parse_config

from ctfleet.contracts import Reason
from ctfleet.errors import Fault, NotFound, Transient

from .failures import sorted_errors

__all__ = ["resolve", "download_s3_model"]



@dataclass(frozen=True)
class _S3Model:
    """Where a model's two files are in S3 (the weights key may still be unknown)."""

    bucket: str
    prefix: str
    config_key: str
    weights_key: str | None

    @classmethod
    def parse(cls, uri: str) -> "_S3Model":
        bucket, key = _split_s3(uri)
        prefix = key if key.endswith("/") else (key.rsplit("/", 1)[0] + "/" if "/" in key else "")
        weights_key = None if key.endswith(("/", ".json")) else key
        return cls(bucket, prefix, key if key.endswith(".json") else prefix + CONFIG_NAME, weights_key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ModelError(Reason.BAD_MODEL_URI, f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


def _call(fn: Any, what: str, **kwargs: Any) -> Any:
    """One S3 call; a missing or forbidden model is the model's error, the rest the error tree's."""
    try:
        with sorted_errors("s3:model"):
            return fn(**kwargs)
    except NotFound as exc:
        raise ModelError(Reason.MODEL_NOT_FOUND, f"{what} not found in S3 ({exc.detail})") from exc
    except Fault as exc:
        if exc.detail.endswith(("AccessDenied", "403", "Forbidden")):
            raise ModelError(Reason.MODEL_ACCESS_DENIED, f"{what}: access denied") from exc
        raise Transient(Reason.SERVICE_ERROR, f"{what}: {exc.detail}") from exc


def download_s3_model(uri: str, *, s3_client: Any, cache_dir: str | os.PathLike[str]) -> Path:
    """Download a model (``model.json`` + weights) from S3 into the cache, once.

    Parameters
    ----------
    uri : str
        ``s3://bucket/key`` (weights file, ``model.json`` or folder prefix).
    s3_client : botocore client
        A boto3 S3 client (its endpoint decides AWS or the local moto server).
    cache_dir : str or os.PathLike
        Root of the local model cache; entries are named by a SHA-256 of the
        bucket, keys and ETags, so a changed object is downloaded again and an
        unchanged one never.

    Returns
    -------
    pathlib.Path
        The cache folder holding ``model.json`` and the weights file.

    Raises
    ------
    ModelError
        ``bad_model_uri``, ``model_not_found``, ``model_access_denied``,
        ``bad_model_config`` (the downloaded ``model.json``).
    Transient
        Other S3 errors (worth retrying).
    """
    where = _S3Model.parse(uri)
    body = _call(s3_client.get_object, where.url(where.config_key), Bucket=where.bucket, Key=where.config_key)
    config_bytes = body["Body"].read()
    config_etag = str(body.get("ETag", "")).strip('"')
    weights_key = _weights_key(s3_client, where, config_bytes)
    head = _call(s3_client.head_object, where.url(weights_key), Bucket=where.bucket, Key=weights_key)
    weights_etag = str(head.get("ETag", "")).strip('"')
    weights_name = weights_key.rsplit("/", 1)[-1]
    parts = [where.bucket, where.config_key, config_etag, weights_key, weights_etag]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    entry = Path(cache_dir).expanduser() / digest
    if not ((entry / CONFIG_NAME).is_file() and (entry / weights_name).is_file()):
        _fill(entry, config_bytes, weights_name,
              lambda: _call(s3_client.get_object, where.url(weights_key), Bucket=where.bucket, Key=weights_key))
    return entry


def _weights_key(s3_client: Any, where: _S3Model, config_bytes: bytes) -> str:
    """The weights object: the one ``model.json`` names, the one given, or the only one beside it."""
    try:
        cfg = parse_config(json.loads(config_bytes.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(Reason.BAD_MODEL_CONFIG, f"{where.config_key}: not JSON: {exc}") from exc
    if cfg.weights is not None:
        declared = where.prefix + cfg.weights
        if where.weights_key is not None and where.weights_key != declared:
            given = where.weights_key.rsplit("/", 1)[-1]
            raise ModelError(Reason.BAD_MODEL_CONFIG, f"{CONFIG_NAME} names weights {cfg.weights!r}, not {given!r}")
        return declared
    if where.weights_key is not None:
        return where.weights_key
    listing = _call(s3_client.list_objects_v2, where.url(where.prefix), Bucket=where.bucket, Prefix=where.prefix,
                    Delimiter="/")
    found = [o["Key"] for o in listing.get("Contents", []) if os.path.splitext(o["Key"])[1] in WEIGHT_SUFFIXES]
    if len(found) != 1:
        raise ModelError(Reason.BAD_MODEL_CONFIG,
                         f"{len(found)} weight files under {where.url(where.prefix)}; name one in {CONFIG_NAME}")
    return str(found[0])


def _fill(entry: Path, config_bytes: bytes, weights_name: str, get_weights: Any) -> None:
    """Write the cache entry in a temporary sibling, then move it in whole."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        (tmp / CONFIG_NAME).write_bytes(config_bytes)
        obj = get_weights()
        with open(tmp / weights_name, "wb") as fh:
            for chunk in iter(lambda: obj["Body"].read(1 << 20), b""):
                fh.write(chunk)
        try:
            os.replace(tmp, entry)  # atomic: a concurrent download of the same entry wins or loses whole
        except OSError:
            if not ((entry / CONFIG_NAME).is_file() and (entry / weights_name).is_file()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(
    name_or_uri: str,
    *,
    s3_client: Any = None,
    cache_dir: str | os.PathLike[str],
    device: str | torch.device = "auto",
) -> Analyzer:
    """The analyzer for a registered name, a local model path or an ``s3://`` URI.

    Parameters
    ----------
    name_or_uri : str
        ``"default"``, a registered name, a local path, or ``s3://bucket/key``.
    s3_client : botocore client, optional
        Required for ``s3://`` URIs.
    cache_dir : str or os.PathLike
        Where S3 models are cached (e.g. ``~/.cache/ctfleet/models``).
    device : str or torch.device
        Where the model is loaded; call the analyzer with the same device.

    Returns
    -------
    model.registry.Analyzer
        Loaded once per process and device.

    Raises
    ------
    ModelError
        ``unknown_model``, ``bad_model_uri``, ``model_not_found``,
        ``bad_model_config``, ``bad_model_weights``, ``bad_model_output``.
    Transient
        An S3 error worth retrying.
    """
    if name_or_uri.startswith("s3://"):
        if s3_client is None:
            raise ModelError(Reason.BAD_MODEL_URI, "an s3:// model needs an S3 client")
        return get(download_s3_model(name_or_uri, s3_client=s3_client, cache_dir=cache_dir), device)
    if name_or_uri in available():
        return get(name_or_uri, device)
    return get(Path(name_or_uri), device)
