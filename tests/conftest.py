"""Shared fixtures: one local Ray instance and one S3 (moto) server per test session.

Each Ray start costs seconds on a 2-core machine, so tests that need Ray take ``ray_session``
(session-scoped) instead of calling ``ray.init`` themselves. ``s3_server`` is a real S3 endpoint
over HTTP (moto's ThreadedMotoServer), reachable from Ray worker processes.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    # One intra-op thread per test process: on a 2-core machine shared with Ray workers and other
    # processes, torch's default pool oversubscribes the cores (measured ~30x slower VQ steps).
    import torch

    torch.set_num_threads(1)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch means no GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback. Yields its endpoint URL; credentials are set in the env."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_client(s3_server):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray instance (2 CPUs, dashboard on for Train-in-Tune and jobs) for the session.

    Depends on ``s3_server`` so that the AWS variables are set before Ray forks its workers.
    Workers see the repo root on PYTHONPATH, so ``ingest``/``jobs``/``tune`` import there too.
    """
    import ray

    pythonpath = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "platform")])
    os.environ["PYTHONPATH"] = pythonpath + (
        os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""
    )
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=True,
        object_store_memory=1_500_000_000,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _repo_on_path():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def tiny_totalseg(tmp_path_factory):
    """TotalSegmentator's weights layout with tiny random nnU-Nets (``ctvlp.synthetic.nnunet``):
    two of the five ``total`` parts (291 organs, 293 cardiac: every class of the chest grouping)
    and the 6 mm crop model (298) of roi subsets. Returns ``(weights folder, two-part task)``."""
    from ctvlp.segment import TotalTask, total_task
    from ctvlp.segment.tasks import crop_task
    from ctvlp.synthetic.nnunet import write_tiny_task

    root = tmp_path_factory.mktemp("totalseg_weights")
    full = total_task("total")
    two = TotalTask("total", full.resample_mm, (full.parts[0], full.parts[2]))
    write_tiny_task(root, two)
    write_tiny_task(root, crop_task(), seed=7)
    return root, two


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    """A tiny synthetic corpus ingested in-process, its shard and a phase-4 debug export
    (``tests/ctvlp/predict/case.py``): the predictor's, its CLI's and the demo's tests share it."""
    from tests.ctvlp.predict.case import build_case

    return build_case(tmp_path_factory.mktemp("predict_case"))


@pytest.fixture(scope="session")
def job_outputs(case):
    """The evaluation job's per-study outputs for ``case``'s studies (its Ray Data callable, in-process)."""
    from tests.ctvlp.predict.case import evaluate_like_the_job

    return evaluate_like_the_job(case)
