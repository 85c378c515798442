"""ingest/storage.py: a dead S3 endpoint is a clear error after bounded, logged attempts."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from ingest.storage import Storage


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    """Some credentials, so that the requests really go out (and botocore does not probe EC2)."""
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)


def _dead_endpoint() -> str:
    """A loopback port with nothing listening (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _silent_endpoint():
    """A listening socket that never answers (the request hangs until the read timeout)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("call", ["read_bytes", "exists", "write_bytes", "list_files"])
def test_dead_endpoint_fails_after_bounded_attempts_with_warnings(call, caplog, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)  # skip the back-off, keep the count
    storage = Storage(endpoint_url=_dead_endpoint(), sse=None, timeout_s=2, max_attempts=3)
    args = ("s3://bucket/key", b"x") if call == "write_bytes" else ("s3://bucket/key",)
    with caplog.at_level(logging.WARNING, logger="ingest.storage"), pytest.raises(OSError) as err:
        getattr(storage, call)(*args)
    assert "s3://bucket/key" in str(err.value) and "storage.max_attempts" in str(err.value)
    assert "failed 3 times" in str(err.value)
    warnings = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert len(warnings) == 2  # attempts 1 and 2 warned; the third raised


def test_an_endpoint_that_stops_answering_times_out(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    sock, endpoint = _silent_endpoint()
    try:
        storage = Storage(endpoint_url=endpoint, sse=None, timeout_s=0.5, max_attempts=2)
        t0 = time.monotonic()
        with pytest.raises(OSError, match="failed 2 times"):
            storage.read_bytes("s3://bucket/key")
        assert 0.9 < time.monotonic() - t0 < 20  # 2 attempts x 0.5 s read timeouts, not a silent wait
    finally:
        sock.close()


def test_missing_credentials_fail_at_once_with_where_they_come_from(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    storage = Storage(endpoint_url=_dead_endpoint(), sse=None, timeout_s=1, max_attempts=3)
    with pytest.raises(OSError, match="no storage credentials on this node"):
        storage.read_bytes("s3://bucket/key")


def test_storage_settings_travel_to_ray_tasks():
    import pickle

    storage = Storage(endpoint_url="http://x:1", sse=None, timeout_s=7, max_attempts=2)
    again = pickle.loads(pickle.dumps(storage))
    assert (again.timeout_s, again.max_attempts, again.endpoint_url) == (7, 2, "http://x:1")
