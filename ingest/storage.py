"""URIs -> filesystems: local paths or ``s3://`` on any S3-compatible endpoint.

One small picklable :class:`Storage` value travels into every Ray task; it builds its
filesystem lazily in the process that uses it. S3 goes through ``s3fs`` (fsspec) because it is
the one client here that can ask for server-side encryption on every write
(``s3_additional_kwargs={"ServerSideEncryption": ...}``; pyarrow's ``S3FileSystem`` has no
SSE-S3 option). Credentials come from the environment / instance role through botocore's usual
chain, never from the spec: only the endpoint URL is configuration.

Local writes go to a temporary name and are renamed into place, and S3 objects appear only when
their upload completes, so a killed job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import fsspec


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (also for local paths: POSIX-only platform)."""
    return posixpath.join(base.rstrip("/"), *[p.strip("/") for p in parts])


@dataclass(frozen=True)
class Storage:
    """Where bytes live. ``endpoint_url`` for S3-compatible stores (moto, MinIO); None = AWS.

    Args:
        endpoint_url: S3 endpoint (``spec.storage.s3_endpoint_url``); ignored for local paths.
        sse: server-side encryption asked for on every S3 write ("AES256" or "aws:kms"); None
            turns it off (for stores that reject the header).
    """

    endpoint_url: str | None = None
    sse: str | None = "AES256"

    def __getstate__(self) -> dict[str, Any]:  # filesystems are rebuilt in each process
        return {"endpoint_url": self.endpoint_url, "sse": self.sse}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @cached_property
    def _s3(self) -> fsspec.AbstractFileSystem:
        import s3fs

        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url,
            s3_additional_kwargs=extra,
            use_listings_cache=False,  # a rerun must see what the killed run wrote
            skip_instance_cache=True,
        )

    @cached_property
    def _local(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem("file")

    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem holding ``uri`` and the path to pass to it (no scheme for S3)."""
        if is_s3(uri):
            return self._s3, uri[len("s3://") :]
        if "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
        return self._local, os.path.abspath(uri.removeprefix("file://"))

    def arrow_fs(self, uri: str):
        """(pyarrow filesystem, path) for pyarrow/Ray Data readers and writers."""
        import pyarrow.fs as pafs

        fs, path = self.fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.fs(uri)
        with fs.open(path, "rb") as f:
            return f.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self.fs(uri)
        if is_s3(uri):
            fs.pipe_file(path, data)  # s3fs adds s3_additional_kwargs (SSE) to the PUT
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(fs.exists(path))

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        """All file URIs under ``prefix`` (recursive) ending with ``suffix``, sorted."""
        fs, path = self.fs(prefix)
        if not fs.exists(path):
            return []
        found = fs.find(path)
        scheme = "s3://" if is_s3(prefix) else ""
        return sorted(scheme + p for p in found if p.endswith(suffix) and not p.endswith(".tmp"))

    def delete(self, uri: str) -> None:
        fs, path = self.fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def storage_from_spec(spec: Any) -> Storage:
    """Build a :class:`Storage` from ``spec.storage`` (endpoint only; credentials from env)."""
    st = getattr(spec, "storage", None)
    endpoint = getattr(st, "s3_endpoint_url", None) if st is not None else None
    sse = getattr(st, "server_side_encryption", "AES256") if st is not None else "AES256"
    return Storage(endpoint_url=endpoint, sse=sse)
