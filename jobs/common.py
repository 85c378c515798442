"""What every job entry point shares: the CLI, spec loading, Ray start-up and storage helpers.

The CLI is deliberately tiny (house style lesson 5): ``--spec PATH`` plus dotted ``key=value``
overrides plus ``--dry-run``; everything else is a spec field.

Ray start-up (:func:`init_ray`) ships ``platform/ctvlp`` and ``jobs/`` with the job through the
runtime env's ``py_modules``, so the workers of a submitted job run the code of the submitted
working directory, never a stale installed copy (the editable install is only a ``.pth`` entry
in site-packages, which comes after the ``PYTHONPATH`` entries that ``py_modules`` adds).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "platform" / "ctvlp"
for _p in (REPO_ROOT, REPO_ROOT / "platform"):
    # Entry scripts run as ``python jobs/phaseN.py``; make the submitted tree win over site-packages.
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def torch_extensions_dir() -> Path:
    """Where DeepSpeed's JIT-compiled ops are cached: inside the active environment.

    ``$TORCH_EXTENSIONS_DIR`` wins when set; otherwise ``<sys.prefix>/torch_extensions`` (the
    venv), so that a fresh environment rebuilds once (``jobs/prebuild_ops.py``) and never shares a
    stale build with another torch version.
    """
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path(sys.prefix) / "torch_extensions"


def build_parser(description: str) -> argparse.ArgumentParser:
    """``--spec PATH [--dry-run] [key=value ...]``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--spec", default=None, help="run spec YAML, merged over jobs/specs/defaults.yaml")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the spec, resolve phase references, print the plan and exit",
    )
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. phases.phase2.lr=3e-4")
    return ap


def parse_cli(description: str, argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """Parse the CLI and load the spec. Exits with status 2 and the loader's message on a bad spec."""
    from ctvlp.config import SpecError, load_spec

    args = build_parser(description).parse_args(argv)
    for text in args.overrides:
        if "=" not in text:
            raise SystemExit(f"override {text!r} is not key=value (e.g. phases.phase1.epochs=2)")
    try:
        spec = load_spec(args.spec, args.overrides)
    except (SpecError, FileNotFoundError) as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None
    return spec, args


def preflight_spec(spec: Any, *, dry_run: bool = False, **needs: Any) -> None:
    """``jobs.preflight.check_spec`` for an entry point: exit 2 with every problem, before Ray.
    With ``dry_run`` the problems are printed after the plan and nothing exits (a dry run of
    phase 2 before phase 1 has run still shows its plan)."""
    from jobs.preflight import PreflightError, check_spec, run_spec_checks

    if dry_run:
        problems = check_spec(spec, **needs)
        print("--- preflight: " + ("ok" if not problems else "a real run would stop here"))
        print("\n".join(str(p) for p in problems)) if problems else None
        return
    try:
        run_spec_checks(spec, **needs)
    except PreflightError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None


def preflight_cluster(spec: Any, **needs: Any) -> None:
    """``jobs.preflight.check_cluster`` after :func:`init_ray`, before any worker or data task."""
    from jobs.preflight import PreflightError, run_cluster_checks

    try:
        run_cluster_checks(spec, **needs)
    except PreflightError as err:
        print(str(err), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


CODE_DIRS = ("platform/ctvlp", "jobs", "ingest", "tune")


def content_hash(root: Path | None = None) -> str:
    """sha256 over the paths and bytes of the code (``CODE_DIRS``' ``.py``/``.yaml`` files): the
    identity of a submitted working directory that is not a git checkout."""
    root, h = root or REPO_ROOT, hashlib.sha256()
    for part in CODE_DIRS:
        for f in sorted((root / part).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".yaml"):
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return "content-sha256:" + h.hexdigest()[:16]


def git_commit() -> str:
    """The commit of the code being run: ``$CTVLP_GIT_COMMIT`` (set by the Docker build and by
    :func:`init_ray` for workers), else ``git rev-parse HEAD`` (``+dirty`` marks uncommitted
    changes), else a :func:`content_hash` of the code (a ``ray job submit`` working directory
    without ``.git``, an unpacked archive)."""
    if os.environ.get("CTVLP_GIT_COMMIT"):
        return os.environ["CTVLP_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0 or not (REPO_ROOT / ".git").exists():
            return content_hash()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return content_hash()


def runtime_env() -> dict:
    """The runtime env every job driver starts Ray with (merged into a submitted job's env).

    It never carries credentials: Ray logs runtime envs and keeps them in job records. Workers
    get storage credentials from their node: the instance profile on AWS, the environment of
    ``ray start`` (or of the driver that started a local Ray) on a local cluster.
    """
    env_vars = {
        "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir()),
        "CTVLP_GIT_COMMIT": git_commit(),
        "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0"),
    }
    modules = [PACKAGE_DIR, REPO_ROOT / "jobs", REPO_ROOT / "ingest"]  # ingest: storage helpers
    return {"py_modules": [str(m) for m in modules], "env_vars": env_vars}


def init_ray() -> None:
    """Connect to Ray: the cluster of ``$RAY_ADDRESS`` (set inside ``ray job submit``), else a
    local instance. No-op when Ray is already initialised (tests, Tune)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env=runtime_env())


def describe_ctvlp() -> str:
    """One line saying which ``ctvlp`` this process imported (jobs print it; the submit test reads it)."""
    import ctvlp

    return f"ctvlp imported from {Path(ctvlp.__file__).resolve().parent} (version {ctvlp.__version__})"
