"""``ray job submit --working-dir . -- python jobs/phase4.py --spec ...`` against a local head.

What the README tells users to do, on loopback: ``ray start --head`` with token authentication on
(Ray 2.60's default) and a small object store, then a submit from a *different* shell whose only
credential is the token (``RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(ray get-auth-token)`` on the
head). The working directory is a copy of the repo whose ``ctvlp.__version__`` is marked, and the
job must report that marked version, imported from Ray's runtime-resources directory (py_modules),
on the driver and on the Train workers: the installed (editable) copy never runs.
Phase 4 trains for real (debug model, demo data preset, 2 CPU workers, DeepSpeed ZeRO-1) from
phase 2/3 exports that the test writes where the spec's phase references resolve.

The same head (one start for all checks) also proves, with the shards on the local S3 server:
- credentials the cloud way: the head's environment (the node's) holds a canary secret key, the
  submitting shell holds none; the job reads its shards from S3, and the canary appears in none
  of Ray's logs, the job's record, the client's output or any file the run writes;
- a job whose Train workers plus data pipeline do not fit the cluster stops within a minute
  naming ``resources.num_workers / resources.cpus_per_worker``;
- a relative ``storage.root`` is refused under job submit; the run records a content hash of
  the submitted working directory (it has no ``.git``) as its commit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.jobs.shards import write_tiny_shards

DEBUG_MODEL = ["model.encoder_depth=debug", "model.text.name_or_path=tiny", "model.vq.dim=32",
               "model.vq.code_dim=32", "model.vq.mlp_dim=64", "model.vq.heads=2", "model.vq.dim_head=16",
               "model.vq.codebook_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CANARY = "CANARYsecret" + uuid.uuid4().hex  # the node's AWS secret key; must never be written anywhere
BUCKET = "submit-shards"


def _spec_tree(tmp: Path, endpoint: str) -> dict:
    from ctvlp.config import load_spec, settable_dict

    spec = load_spec(None, ["name=submit", "data.preset=demo", f"data.shards_uri=s3://{BUCKET}/shards",
                            f"storage.s3_endpoint_url={endpoint}", "storage.server_side_encryption=null",
                            f"storage.root={tmp / 'runs'}", "resources.num_workers=2", "resources.cpus_per_worker=0.5",
                            *DEBUG_MODEL,
                            "phases.phase4.epochs=1", "phases.phase4.global_batch_size=2",
                            "phases.phase4.max_steps_per_epoch=2", "phases.phase4.checkpoint_every_steps=1"])
    return settable_dict(spec)


def _prepare_inputs(tmp: Path, tree: dict, s3_client) -> str:
    """Shards on S3 plus phase 2/3 exports (untrained debug tasks) where phase 4's references resolve."""
    from ctvlp.config import spec_from_dict
    from ctvlp.tasks import build_task
    from jobs.plan import export_uri, resolve_phase

    spec = spec_from_dict(tree)
    local = tmp / "shards"
    write_tiny_shards(str(local), num_studies=4, num_anatomies=spec.data.num_anatomies, shape=(48, 64, 64))
    s3_client.create_bucket(Bucket=BUCKET)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        s3_client.put_object(Bucket=BUCKET, Key=f"shards/{f.relative_to(local).as_posix()}", Body=f.read_bytes())
    for phase in (2, 3):
        build_task(resolve_phase(spec, phase), phase, init={}).export(export_uri(resolve_phase(spec, phase), phase))
    return export_uri(resolve_phase(spec, 4), 4)


def _working_dir(repo_root: Path, dest: Path, marker: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("jobs", "ingest", "platform/ctvlp"):
        shutil.copytree(repo_root / part, dest / part, ignore=ignore)
    init = dest / "platform/ctvlp/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "0.1.0+{marker}"'))
    assert marker in init.read_text()


class LocalHead:
    """A ``ray start --head`` on loopback in its own temp dir and HOME; stopped by pid."""

    def __init__(self, tmp: Path, node_env: dict | None = None) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ctvlp-head-", dir="/tmp"))  # short: socket paths
        self.home = tmp / "head_home"
        self.home.mkdir()
        self.dashboard = _free_port()
        venv_bin = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH", "AWS_"))}
        self.env.update(HOME=str(self.home), PATH=f"{venv_bin}:{self.env.get('PATH', '')}",
                        RAY_USAGE_STATS_ENABLED="0", **(node_env or {}))

    def start(self) -> None:
        # Token auth on, explicitly: a loopback head otherwise starts with it disabled. The token
        # is generated into this head's HOME (~/.ray/auth_token) and read by `ray start`.
        subprocess.run(["bash", "-c", "umask 077 && ray get-auth-token --generate >/dev/null"], env=self.env,
                       check=True, capture_output=True, text=True, timeout=60)  # as README: mode 600
        self.env["RAY_AUTH_MODE"] = "token"
        cmd = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}", "--include-dashboard=true",
               # Free ports for the per-node agents too: the defaults (52365, ...) are taken by the
               # test session's own Ray, and a head whose dashboard agent cannot bind accepts no job.
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}",
               # 2 x 0.5 CPU for the Train workers + 1 for Ray Data's read/decode tasks: a 2-core machine
               "--num-cpus=2", "--object-store-memory=300000000", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=180)

    def token(self) -> str:
        out = subprocess.run(["ray", "get-auth-token"], env=self.env, capture_output=True, text=True,
                             timeout=60, check=True)
        return out.stdout.strip().splitlines()[-1]

    def stop(self, keep: bool = False) -> None:
        """SIGTERM then SIGKILL every process whose command line names this head's temp dir;
        its files are removed unless ``keep`` (the caller scans them first)."""
        import psutil

        def ours():
            found = []
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if any(str(self.temp_dir) in a for a in (p.info["cmdline"] or [])):
                        found.append(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            return found

        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in ours():
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(3)
        if not keep:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _submit(head: LocalHead, client_env: dict, workdir: Path, args: list[str], timeout: int):
    """``ray job submit``; retried while the head answers "No available agent" (HTTP 500): its
    dashboard agent registers some seconds after ``ray start`` returns, later on a loaded machine."""
    cmd = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{head.dashboard}",
           "--working-dir", ".", "--", "python", *args]
    deadline = time.monotonic() + 120
    while True:
        out = subprocess.run(cmd, cwd=workdir, env=client_env, capture_output=True, text=True, timeout=timeout)
        if "No available agent" not in out.stdout + out.stderr or time.monotonic() > deadline:
            return out
        time.sleep(3)


def _resolved_inits(tree: dict) -> dict:
    from ctvlp.config import spec_from_dict
    from jobs.plan import resolve_phase

    return resolve_phase(spec_from_dict(tree), 4).phase(4).init.refs()


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink() and needle in f.read_bytes():
                hits.append(str(f))
        except OSError:
            pass  # sockets, files removed while scanning
    return hits


def _job_records(head: LocalHead, client_env: dict) -> str:
    """Every job's record as the dashboard serves it (``ray list jobs --detail``)."""
    out = subprocess.run(["ray", "list", "jobs", "--detail", "--format", "json", "--address",
                          f"http://127.0.0.1:{head.dashboard}"], env=client_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_ray_job_submit_runs_phase4_from_the_submitted_working_dir(repo_root, tmp_path, s3_server, s3_client):
    marker = f"submitted{uuid.uuid4().hex[:8]}"
    workdir = tmp_path / "work"
    _working_dir(repo_root, workdir, marker)
    tree = _spec_tree(tmp_path, s3_server)
    (workdir / "jobs/specs/submit.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    export = _prepare_inputs(tmp_path, tree, s3_client)

    # the node's environment holds the storage credentials (as `ray start` on a local cluster)
    head = LocalHead(tmp_path, node_env={"AWS_ACCESS_KEY_ID": "canary-id", "AWS_SECRET_ACCESS_KEY": CANARY,
                                         "AWS_DEFAULT_REGION": "us-east-1"})
    head.start()
    logs = []
    try:
        client_env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE" and not k.startswith("AWS_")}
        client_env["HOME"] = str(tmp_path / "client_home")  # this shell has no token file, no AWS keys
        denied = _submit(head, client_env, workdir, ["jobs/phase4.py", "--dry-run"], timeout=120)
        assert denied.returncode != 0 and "token" in (denied.stdout + denied.stderr).lower()

        client_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token())
        t0 = time.monotonic()
        # the init exports named explicitly: resources are part of the phase fingerprint
        inits = [f"phases.phase4.init.{k}={v}" for k, v in _resolved_inits(tree).items()]
        small = _submit(head, client_env, workdir, ["jobs/phase4.py", "--spec", "jobs/specs/submit.yaml",
                                                    "resources.cpus_per_worker=1", *inits], timeout=300)
        small_s = time.monotonic() - t0
        relative = _submit(head, client_env, workdir, ["jobs/phase4.py", "--spec", "jobs/specs/submit.yaml",
                                                       "storage.root=runs"], timeout=300)
        done = _submit(head, client_env, workdir, ["jobs/phase4.py", "--spec", "jobs/specs/submit.yaml"], timeout=560)
        logs = [out.stdout + out.stderr for out in (denied, small, relative, done)]
        log = logs[-1]
        assert done.returncode == 0 and "succeeded" in log, log[-4000:]
        records = _job_records(head, client_env)
    finally:
        head.stop(keep=True)

    # too small: 2 workers x 1 CPU + 1 for Ray Data > 2 CPUs; stopped by the preflight, at once
    assert small.returncode != 0 and "resources.num_workers / resources.cpus_per_worker" in logs[1], logs[1]
    assert small_s < 60, small_s
    assert relative.returncode != 0 and "storage.root: relative path 'runs'" in logs[2], logs[2][-3000:]

    imported = [line for line in log.splitlines() if "ctvlp imported from" in line]
    assert len(imported) >= 2, log[-4000:]  # the driver and rank 0 of the Train workers
    assert any("[phase4]" in line for line in imported)
    for line in imported:
        assert marker in line, line  # the submitted copy's version ...
        assert str(repo_root / "platform") not in line and "runtime_resources" in line  # ... via py_modules
    meta = json.loads((Path(export) / "export_meta.json").read_text())
    assert meta["git_commit"].startswith("content-sha256:")  # the working dir is not a checkout

    # the canary: nowhere in Ray's logs and session files, the job records, the client's output,
    # the run's files or the bucket
    needle = CANARY.encode()
    assert _files_containing(head.temp_dir, needle) == []
    assert _files_containing(tmp_path, needle) == []
    assert CANARY not in records and CANARY not in "".join(logs)
    for obj in s3_client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        assert needle not in s3_client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    assert len(list(head.temp_dir.rglob("*.log"))) > 5  # the scan saw Ray's logs
    shutil.rmtree(head.temp_dir, ignore_errors=True)
