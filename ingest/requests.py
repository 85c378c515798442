"""Counting storage requests: a filesystem proxy that logs every call by its S3 request kind.

``Storage(request_log=PATH)`` wraps each filesystem it builds in :class:`CountingFileSystem`,
which appends one line ``KIND<TAB>path`` per request to ``PATH`` (``O_APPEND``: safe from the
Ray tasks and actors of one machine, which receive the ``Storage`` pickled). Kinds follow what
the call costs on S3, so counts taken on local files or moto transfer to S3 (timings do not):

| kind | calls |
|---|---|
| LIST | ``ls``, ``find``, ``glob``, ``walk``, ``listdir`` (one ListObjectsV2 page per 1000 keys) |
| HEAD | ``info``, ``exists``, ``size``, ``isfile``, ``isdir``; opening an object for reading |
| GET | each ``read`` of an opened object (one ranged GET), ``cat_file`` |
| PUT | ``pipe_file``, an object opened for writing, :meth:`ingest.storage.Storage.write_bytes` |
| DELETE | ``rm`` |

Used by ``bench/control_plane.py`` and the tests that pin the readers' request pattern.
"""

from __future__ import annotations

import collections
import os
from typing import Any

LIST_PAGE = 1000  # keys per ListObjectsV2 response

_KINDS = {
    "ls": "LIST", "find": "LIST", "glob": "LIST", "walk": "LIST", "listdir": "LIST",
    "info": "HEAD", "exists": "HEAD", "size": "HEAD", "isfile": "HEAD", "isdir": "HEAD",
    "cat_file": "GET", "pipe_file": "PUT", "rm": "DELETE",
}


def log_request(log_path: str, kind: str, path: str, count: int = 1) -> None:
    """Append ``count`` requests of ``kind`` on ``path`` to the log (one line each)."""
    line = f"{kind}\t{path}\n" * count
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_requests(log_path: str) -> list[tuple[str, str]]:
    """``[(kind, path), ...]`` in the order logged; empty when nothing was logged."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


def count_requests(log_path: str) -> dict[str, int]:
    """Requests per kind (``LIST``, ``HEAD``, ``GET``, ``PUT``, ``DELETE``)."""
    return dict(collections.Counter(kind for kind, _ in read_requests(log_path)))


class _CountingFile:
    """A file object whose every ``read`` (or ``read_at``) is one GET."""

    def __init__(self, inner: Any, log_path: str, path: str) -> None:
        self._inner, self._log, self._path = inner, log_path, path

    def read(self, *args: Any, **kwargs: Any) -> Any:
        log_request(self._log, "GET", self._path)
        return self._inner.read(*args, **kwargs)

    def readinto(self, buffer: Any) -> Any:
        log_request(self._log, "GET", self._path)
        return self._inner.readinto(buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.close()

    def __iter__(self):
        return iter(self._inner)


class CountingFileSystem:
    """Proxy of an fsspec filesystem that logs each request (module doc) and delegates it."""

    def __init__(self, inner: Any, log_path: str) -> None:
        self._inner, self._log = inner, log_path

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        kind = _KINDS.get(name)
        if kind is None or not callable(attr):
            return attr

        def counted(path: Any = "", *args: Any, **kwargs: Any) -> Any:
            out = attr(path, *args, **kwargs)
            pages = 1
            if kind == "LIST" and hasattr(out, "__len__"):
                pages = max(1, -(-len(out) // LIST_PAGE))
            log_request(self._log, kind, str(path), pages)
            return out

        return counted

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        f = self._inner.open(path, mode, *args, **kwargs)
        if "r" in mode:
            log_request(self._log, "HEAD", str(path))  # the size lookup an S3 open makes
            return _CountingFile(f, self._log, str(path))
        log_request(self._log, "PUT", str(path))
        return f
