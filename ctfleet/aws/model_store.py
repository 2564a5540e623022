"""Resolve ``--model`` / the worker's model setting to a loaded analyzer.

``resolve(name_or_uri, s3_client=..., cache_dir=...)`` accepts:

* ``"default"`` or any name registered with :func:`model.registry.register`;
* a local path: a weights file with ``model.json`` beside it, a ``model.json``,
  or a folder holding one (see :mod:`model.scripted`);
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
from pathlib import Path
from typing import Any

import torch

from model.registry import Analyzer, ModelError, available, get
from model.scripted import CONFIG_NAME, WEIGHT_SUFFIXES, parse_config

from ctfleet.errors import Transient

__all__ = ["resolve", "download_s3_model"]

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ModelError("bad_model_uri", f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


def _call(fn: Any, what: str, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise ModelError("model_not_found", f"{what} not found in S3 ({code})") from exc
        if code in ("AccessDenied", "403", "Forbidden"):
            raise ModelError("model_access_denied", f"{what}: access denied") from exc
        raise Transient("s3_error", f"{what}: {code}") from exc
    except BotoCoreError as exc:
        raise Transient("s3_error", f"{what}: {type(exc).__name__}") from exc


def _etag(s3_client: Any, bucket: str, key: str) -> str:
    head = _call(s3_client.head_object, f"s3://{bucket}/{key}", Bucket=bucket, Key=key)
    return str(head.get("ETag", "")).strip('"')


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
    bucket, key = _split_s3(uri)
    if key.endswith("/"):
        prefix, weights_key = key, None
    elif key.endswith(".json"):
        prefix, weights_key = key.rsplit("/", 1)[0] + "/" if "/" in key else "", None
    else:
        prefix, weights_key = (key.rsplit("/", 1)[0] + "/" if "/" in key else ""), key
    config_key = key if key.endswith(".json") else prefix + CONFIG_NAME

    body = _call(s3_client.get_object, f"s3://{bucket}/{config_key}", Bucket=bucket, Key=config_key)
    config_bytes = body["Body"].read()
    config_etag = str(body.get("ETag", "")).strip('"')
    try:
        cfg = parse_config(json.loads(config_bytes.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError("bad_model_config", f"{config_key}: not JSON: {exc}") from exc
    if cfg.weights is not None:
        declared = prefix + cfg.weights
        if weights_key is not None and weights_key != declared:
            raise ModelError("bad_model_config", f"{CONFIG_NAME} names weights {cfg.weights!r}, not {weights_key.rsplit('/', 1)[-1]!r}")
        weights_key = declared
    if weights_key is None:
        listing = _call(s3_client.list_objects_v2, f"s3://{bucket}/{prefix}", Bucket=bucket, Prefix=prefix, Delimiter="/")
        found = [o["Key"] for o in listing.get("Contents", []) if os.path.splitext(o["Key"])[1] in WEIGHT_SUFFIXES]
        if len(found) != 1:
            raise ModelError("bad_model_config", f"{len(found)} weight files under s3://{bucket}/{prefix}; name one in {CONFIG_NAME}")
        weights_key = found[0]
    weights_etag = _etag(s3_client, bucket, weights_key)
    weights_name = weights_key.rsplit("/", 1)[-1]

    digest = hashlib.sha256("\n".join([bucket, config_key, config_etag, weights_key, weights_etag]).encode()).hexdigest()[:24]
    root = Path(cache_dir).expanduser()
    entry = root / digest
    if (entry / CONFIG_NAME).is_file() and (entry / weights_name).is_file():
        return entry
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=root))
    try:
        (tmp / CONFIG_NAME).write_bytes(config_bytes)
        obj = _call(s3_client.get_object, f"s3://{bucket}/{weights_key}", Bucket=bucket, Key=weights_key)
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
    return entry


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
            raise ModelError("bad_model_uri", "an s3:// model needs an S3 client")
        return get(download_s3_model(name_or_uri, s3_client=s3_client, cache_dir=cache_dir), device)
    if name_or_uri in available():
        return get(name_or_uri, device)
    return get(Path(name_or_uri), device)
