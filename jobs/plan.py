"""From a ``JobSpec`` to runnable phases: stable run names, resolved phase references, plans.

A phase's run name is ``<spec.name>-phase<N>-<fingerprint>``, where the fingerprint hashes what
determines that phase's result: the spec minus the other phases' optimisation settings and the
``eval``/``tune``/``compare`` sections, with the phase's ``init`` references already resolved to URIs.
Rerunning the same spec therefore lands in the same run (and resumes it); changing phase 4's
learning rate does not restart phase 1.

Phase references (``phases.phaseN.init.<part>: "phaseM"``) resolve to the export directory of
phase M's run under the same spec (``<storage.root>/<run name of M>/export``): the pipeline and a
standalone ``jobs/phaseN.py`` compute the same URI, and it is recorded in the phase's resolved
spec (``resolved_spec.yaml`` in every checkpoint and export).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import yaml

from ctvlp.config import JobSpec, is_phase_ref, settable_dict, spec_from_dict
from ctvlp.loop import train_config_from_spec
from ingest.storage import is_s3, join
from jobs.runner import PhasePlan

PHASES = (1, 2, 3, 4)
# method settings that only change how an export is scored, not what trains: left out of run names
EVAL_ONLY = {"asg": ("zero_shot",)}


def storage_root(spec: JobSpec) -> str:
    """``spec.storage.root`` as Ray needs it: ``s3://...`` as is, local paths absolute."""
    root = spec.storage.root
    return root.rstrip("/") if is_s3(root) else os.path.abspath(root)


def phase_fingerprint(spec: JobSpec, phase: int, length: int = 10) -> str:
    """Hash of the settings that determine ``phase``'s result (see the module docstring)."""
    tree = settable_dict(spec)
    tree["phases"] = {f"phase{phase}": tree["phases"][f"phase{phase}"]}
    for key in ("eval", "tune", "compare"):
        tree.pop(key, None)
    methods = tree.pop("methods", None)
    if phase == 2 and methods and methods.get("phase2_task", "alignment") != "alignment":
        # another method trains phase 2: only its own settings decide the result; every other
        # run keeps its name whatever the (unused) method sections say
        task = methods["phase2_task"]
        own = {k: v for k, v in (methods.get(task) or {}).items() if k not in EVAL_ONLY.get(task, ())}
        tree["methods"] = {"phase2_task": task, "findings": methods.get("findings"), task: own}
    tree["resources"].pop("max_failures", None)  # retries do not change the result
    if "ingest" in tree:  # zstd is lossless: every level gives the same shards, hence the same run;
        tree["ingest"]["codec_level"] = 3  # hashed as level 3, the default runs were named with
    blob = json.dumps(tree, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def run_name(spec: JobSpec, phase: int) -> str:
    return f"{spec.name}-phase{phase}-{phase_fingerprint(spec, phase)}"


def resolve_phase(spec: JobSpec, phase: int) -> JobSpec:
    """``spec`` with ``phases.phase<phase>.init`` phase references replaced by export URIs."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    tree = settable_dict(spec)
    init = tree["phases"][f"phase{phase}"]["init"]
    for part, ref in list(init.items()):
        if is_phase_ref(ref):
            earlier = int(ref[-1])
            init[part] = export_uri(resolve_phase(spec, earlier), earlier)
    return spec_from_dict(tree)


def export_uri(resolved: JobSpec, phase: int) -> str:
    """Where phase ``phase`` of an already-resolved spec exports its model."""
    return join(storage_root(resolved), run_name(resolved, phase), "export")


def plan_for(resolved: JobSpec, phase: int, *, git_commit: str = "unknown") -> PhasePlan:
    """The runner's plan for ``phase`` of a spec resolved with :func:`resolve_phase`."""
    unresolved = {k: v for k, v in resolved.phase(phase).init.refs().items() if is_phase_ref(v)}
    if unresolved:
        raise ValueError(f"phase{phase}.init still has phase references {unresolved}: call resolve_phase first")
    res = resolved.resources
    return PhasePlan(
        phase=phase,
        run_name=run_name(resolved, phase),
        storage_path=storage_root(resolved),
        s3_endpoint_url=resolved.storage.s3_endpoint_url,
        sse=resolved.storage.server_side_encryption,
        train=train_config_from_spec(resolved, phase, cuda=res.use_gpu),
        num_workers=res.num_workers,
        use_gpu=res.use_gpu,
        cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=res.gpus_per_worker,
        max_failures=res.max_failures,
        shuffle_buffer=resolved.data.shuffle_buffer,
        resolved_spec_yaml=yaml.safe_dump(settable_dict(resolved), sort_keys=False),
        model_config=resolved.model.model_dump(mode="json"),
        git_commit=git_commit,
        data_stall_timeout_s=resolved.data.stall_timeout_s,
        storage_timeout_s=resolved.storage.timeout_s,
        storage_max_attempts=resolved.storage.max_attempts,
    )


def card_data(resolved: JobSpec) -> dict[str, Any]:
    """The model card's data facts (``ctvlp.card.data_facts``): the shards' ``index.json`` (counts
    per split, quarantine) and the source's kind (a ``ctvlp.synthetic`` corpus has ``corpus.json``
    at its root). Unreadable storage leaves the counts unknown; it never stops training."""
    from ctvlp.card import data_facts
    from ingest.storage import storage_from_spec

    storage, d = storage_from_spec(resolved), resolved.data
    index, kind = None, "unknown"
    try:
        if d.shards_uri and storage.exists(join(d.shards_uri, "index.json")):
            index = json.loads(storage.read_bytes(join(d.shards_uri, "index.json")))
        if d.source_uri:
            root = d.source_uri.rstrip("/")  # the download root, or its dataset/ folder
            roots = [root] + ([root.rsplit("/", 1)[0]] if root.endswith("/dataset") else [])
            synthetic = any(storage.exists(join(r, "corpus.json")) for r in roots)
            kind = "synthetic" if synthetic else ("ctrate" if d.manifest_format == "ctrate" else "manifest")
    except (OSError, ValueError) as exc:
        print(f"[plan] model card: data facts unreadable ({type(exc).__name__}); counts left unknown", flush=True)
    return data_facts(resolved, index, kind)
