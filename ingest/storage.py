"""URIs -> filesystems: local paths or ``s3://`` on any S3-compatible endpoint.

One small picklable :class:`Storage` value travels into every Ray task; it builds its
filesystem lazily in the process that uses it. S3 goes through ``s3fs`` (fsspec) because it is
the one client here that can ask for server-side encryption on every write
(``s3_additional_kwargs={"ServerSideEncryption": ...}``; pyarrow's ``S3FileSystem`` has no
SSE-S3 option). Credentials come from the environment / instance role through botocore's usual
chain, never from the spec: only the endpoint URL is configuration.

Every S3 call has a timeout (``storage.timeout_s``) and at most ``storage.max_attempts``
attempts, each failed one logged as a warning, so an endpoint that stops answering becomes an
error naming the URI and the keys instead of a silent wait (botocore's and s3fs's own silent
retries are off for them: the count here is the whole count; the pyarrow filesystem handed to
Ray Data and Ray Train keeps s3fs's bounded retries with the same timeouts).

Local writes go to a temporary name and are renamed into place, and S3 objects appear only when
their upload completes, so a killed job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import fsspec

log = logging.getLogger(__name__)
# Errors that retrying cannot fix: raised at once.
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError")  # botocore's, by name: lazy import
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)


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
        timeout_s: connect and read timeout of each S3 request (``storage.timeout_s``).
        max_attempts: attempts per storage call before it fails (``storage.max_attempts``).
        request_log: a local file that gets one line per storage request (``ingest.requests``:
            benchmarks and tests count LIST/HEAD/GET/PUT with it); None: no counting.
    """

    endpoint_url: str | None = None
    sse: str | None = "AES256"
    timeout_s: float = 60.0
    max_attempts: int = 4
    request_log: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # filesystems are rebuilt in each process
        return {"endpoint_url": self.endpoint_url, "sse": self.sse, "timeout_s": self.timeout_s,
                "max_attempts": self.max_attempts, "request_log": self.request_log}

    def _counted(self, fs: fsspec.AbstractFileSystem) -> Any:
        if self.request_log is None:
            return fs
        from ingest.requests import CountingFileSystem

        return CountingFileSystem(fs, self.request_log)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @cached_property
    def _s3(self) -> fsspec.AbstractFileSystem:
        """For this class's own calls: one attempt per request, :meth:`_call` retries and warns."""
        return self._counted(self._new_s3(retries=1))

    @cached_property
    def _s3_bulk(self) -> fsspec.AbstractFileSystem:
        """For pyarrow/Ray Data/Ray Train (:meth:`arrow_fs`): s3fs's own bounded retries."""
        return self._counted(self._new_s3(retries=self.max_attempts))

    def _new_s3(self, retries: int) -> fsspec.AbstractFileSystem:
        import s3fs

        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        fs = s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url,
            s3_additional_kwargs=extra,
            use_listings_cache=False,  # a rerun must see what the killed run wrote
            skip_instance_cache=True,
            config_kwargs={"connect_timeout": self.timeout_s, "read_timeout": self.timeout_s,
                           "retries": {"max_attempts": 1, "mode": "standard"}},
        )
        fs.retries = retries  # s3fs's retry loop (its log is debug only)
        return fs

    @cached_property
    def _local(self) -> fsspec.AbstractFileSystem:
        return self._counted(fsspec.filesystem("file"))

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
        if is_s3(uri):
            fs = self._s3_bulk
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def _call(self, what: str, uri: str, fn: Any) -> Any:
        """``fn()`` with up to ``max_attempts`` attempts on S3, a warning per failed attempt."""
        attempts = self.max_attempts if is_s3(uri) else 1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except _PERMANENT:
                raise
            except Exception as err:
                if type(err).__name__ in _NO_CREDENTIALS:
                    raise OSError(f"storage: {what} {uri}: no storage credentials on this node ({type(err).__name__}); "
                                  "they come from the node: its instance profile, or the environment "
                                  "of `ray start` / of the driver (docs/training.md)") from err
                if attempt == attempts:
                    raise OSError(
                        f"storage: {what} {uri} failed {attempts} times ({type(err).__name__}: {err}); "
                        f"is the endpoint ({self.endpoint_url or 'AWS'}) reachable? storage.timeout_s and "
                        "storage.max_attempts set the patience"
                    ) from err
                wait = min(2.0 ** attempt, 30.0)
                log.warning("storage: %s %s failed (%s: %s); attempt %d of %d, retrying in %.0f s",
                            what, uri, type(err).__name__, err, attempt, attempts, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.fs(uri)

        def read() -> bytes:
            with fs.open(path, "rb") as f:
                return f.read()

        return self._call("read", uri, read)

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self.fs(uri)
        if is_s3(uri):  # s3fs adds s3_additional_kwargs (SSE) to the PUT
            self._call("write", uri, lambda: fs.pipe_file(path, data))
            return
        if self.request_log is not None:
            from ingest.requests import log_request

            log_request(self.request_log, "PUT", path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(self._call("exists", uri, lambda: fs.exists(path)))

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        """All file URIs under ``prefix`` (recursive) ending with ``suffix``, sorted."""
        fs, path = self.fs(prefix)
        if not self.exists(prefix):
            return []
        found = self._call("list", prefix, lambda: fs.find(path))
        scheme = "s3://" if is_s3(prefix) else ""
        return sorted(scheme + p for p in found if p.endswith(suffix) and not p.endswith(".tmp"))

    def delete(self, uri: str) -> None:
        fs, path = self.fs(uri)
        if self.exists(uri):
            self._call("delete", uri, lambda: fs.rm(path, recursive=True))


def storage_from_spec(spec: Any) -> Storage:
    """Build a :class:`Storage` from ``spec.storage`` (endpoint only; credentials from env)."""
    st = getattr(spec, "storage", None)
    endpoint = getattr(st, "s3_endpoint_url", None) if st is not None else None
    sse = getattr(st, "server_side_encryption", "AES256") if st is not None else "AES256"
    return Storage(endpoint_url=endpoint, sse=sse, timeout_s=getattr(st, "timeout_s", 60.0),
                   max_attempts=getattr(st, "max_attempts", 4))
