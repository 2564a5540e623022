"""One S3 bucket's objects: get, put, list, delete, presign; errors sorted into the tree."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .failures import retrying, sorted_errors

POOL = 8  # parallel transfers per call: S3 latency, not bandwidth, bounds small DICOM files
CONTENT_TYPES = {"png": "image/png", "json": "application/json", "gz": "application/gzip",
                 "dcm": "application/dicom"}


def content_type(key: str) -> str:
    """The Content-Type of a result or study object, from its extension."""
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


class Objects:
    """The objects of one bucket.

    Parameters
    ----------
    s3 : boto3 S3 client
    bucket : str
    """

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    @retrying
    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`~ctfleet.errors.NotFound` when it does not exist."""
        with sorted_errors("s3:get"):
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Every object's bytes, in the order of ``keys``, fetched in parallel."""
        with ThreadPoolExecutor(POOL) as pool:
            return list(pool.map(self.get, keys))

    @retrying
    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        """Write (or overwrite) one object."""
        with sorted_errors("s3:put"):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Write ``(key, body)`` pairs in parallel, each with the Content-Type of its extension."""
        with ThreadPoolExecutor(POOL) as pool:
            list(pool.map(lambda kv: self.put(kv[0], kv[1], content_type(kv[0])), items))

    @retrying
    def sizes(self, prefix: str) -> dict[str, int]:
        """Object sizes under ``prefix``, keyed by the name after the prefix."""
        sizes: dict[str, int] = {}
        with sorted_errors("s3:list"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    sizes[obj["Key"][len(prefix):]] = int(obj["Size"])
        return sizes

    @retrying
    def delete(self, key: str) -> None:
        with sorted_errors("s3:delete"):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def prefixes(self, prefix: str, *, depth: int, limit: int) -> list[str]:
        """The distinct key prefixes ``depth`` '/'-parts below ``prefix`` (e.g. raw/{facility}/{upload}/),
        from at most ``limit`` objects."""
        found: dict[str, None] = {}
        seen = 0
        with sorted_errors("s3:list"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    parts = obj["Key"][len(prefix):].split("/")
                    if len(parts) > depth:
                        found[prefix + "/".join(parts[:depth]) + "/"] = None
                    seen += 1
                if seen >= limit:
                    break
        return list(found)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        keys = [prefix + name for name in self.sizes(prefix)]
        for i in range(0, len(keys), 1000):
            self._delete(keys[i:i + 1000])
        return len(keys)

    @retrying
    def _delete(self, keys: list[str]) -> None:
        with sorted_errors("s3:delete"):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    def presigned_post(self, key: str, size: int, ttl_s: int) -> dict[str, Any]:
        """A presigned POST for exactly ``size`` bytes at ``key`` (``{"url", "fields"}``)."""
        post = self.s3.generate_presigned_post(Bucket=self.bucket, Key=key,
                                               Conditions=[["content-length-range", size, size]], ExpiresIn=ttl_s)
        return {"url": post["url"], "fields": post["fields"]}

    def presigned_get(self, key: str, ttl_s: int) -> str:
        """A presigned GET URL of ``key``."""
        return str(self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=ttl_s))
