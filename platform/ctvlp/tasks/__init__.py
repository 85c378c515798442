"""One task per phase and the factory that builds a phase's task from a spec.

Phase 2 can be trained by another method instead of ViSD-Boost's alignment: ``METHODS`` maps
``methods.phase2_task`` to its task (ASG, MeDSLIP; docs/methods.md). A method's task is a
:class:`Task` like any phase's, so the runner, the golden harness and the evaluation take it as is.

``build_task(spec, phase, init)`` loads each initialisation strictly. ``init`` maps the phase's
init fields (vision_encoder, text_encoder, aligned_model, vqvae) to *local* export directories;
by default they are read from the spec, where a phase reference ("phase2") must already have been
resolved to a URI by the pipeline (jobs/pipeline.py).
"""

from __future__ import annotations

from pathlib import Path

from ctvlp.config import JobSpec, is_phase_ref
from ctvlp.tasks.asg import ASGTask
from ctvlp.tasks.base import Task, total_loss
from ctvlp.tasks.clip import GlobalAlignmentTask
from ctvlp.tasks.medslip import MedSLIPTask
from ctvlp.tasks.phase1 import DiseaseContrastiveTask
from ctvlp.tasks.phase2 import AlignmentTask
from ctvlp.tasks.phase3 import NormalityTask
from ctvlp.tasks.phase4 import BoostedAlignmentTask

TASKS: dict[int, type[Task]] = {
    1: DiseaseContrastiveTask,
    2: AlignmentTask,
    3: NormalityTask,
    4: BoostedAlignmentTask,
}

# methods.phase2_task -> the task that trains phase 2
METHODS: dict[str, type[Task]] = {
    "alignment": AlignmentTask,
    "asg": ASGTask,
    "medslip": MedSLIPTask,
}

# init field -> [(task part, part in the export)]
INIT_PARTS: dict[str, list[tuple[str, str]]] = {
    "vision_encoder": [("vision", "vision")],
    "text_encoder": [("text", "text")],
    "aligned_model": [("vision", "vision"), ("text", "text")],
    "vqvae": [("vqvae", "vqvae")],
}


def build_task(spec: JobSpec, phase: int, init: dict[str, str | Path] | None = None) -> Task:
    """The phase's task with its initial weights loaded (strict: a listed part must load)."""
    task = task_class(spec, phase)(spec)
    refs = dict(spec.phase(phase).init.refs()) if init is None else {k: v for k, v in init.items() if v}
    for field, uri in refs.items():
        if is_phase_ref(str(uri)):
            raise ValueError(
                f"phases.phase{phase}.init.{field} = {uri!r} is an unresolved phase reference: run "
                "jobs/pipeline.py (which resolves it) or give the export's URI"
            )
        if field not in INIT_PARTS:
            raise ValueError(f"unknown init field {field!r}; allowed: {sorted(INIT_PARTS)}")
        for part, source in INIT_PARTS[field]:
            if part not in task.module:
                raise ValueError(f"phase {phase} has no {part!r} part to initialise from {field}")
            task.load_init(part, uri, source)
    return task


def task_class(spec: JobSpec, phase: int) -> type[Task]:
    """The task class of ``phase`` under ``spec``: phase 2 is ``METHODS[methods.phase2_task]``, or
    CLIP's global alignment when ``model.alignment`` is "global", which has no anatomy embeddings
    for phases 1, 3 and 4."""
    if phase not in TASKS:
        raise ValueError(f"phase must be one of {sorted(TASKS)}, got {phase!r}")
    if spec.model.alignment == "global":
        if phase != 2:
            raise ValueError(f"model.alignment=global (CLIP) trains phase 2 only; phase {phase} needs "
                             "per-anatomy embeddings (model.alignment=anatomy)")
        return GlobalAlignmentTask
    if phase == 2:
        return METHODS[spec.methods.phase2_task]
    return TASKS[phase]


def method_parts(spec: JobSpec, method: str) -> dict:
    """Freshly built parts of ``method``'s task under ``spec`` (``{part: nn.Module}``): the
    modules an export of that method loads into (``ctvlp.eval.embed.EvalModel.from_export``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    return dict(METHODS[method](spec).module.items())


__all__ = ["Task", "TASKS", "METHODS", "build_task", "task_class", "method_parts", "total_loss", "INIT_PARTS"]
