"""From a spec's ``tune`` section to Ray Tune objects: search space, searcher, ASHA, objective.

``tune.space`` maps dotted spec keys to distributions::

    tune:
      phase: 3
      space:
        model.vq.codebook_size: {kind: choice, values: [32, 64, 100, 128, 256]}
        model.vq.beta: {kind: uniform, low: 0.1, high: 1.0}
        model.temperature_init: {kind: loguniform, low: 0.01, high: 0.2}

A trial's config is ``{dotted key: sampled value}``; :func:`apply_params` writes those values into
the base spec and re-validates it, so a sampled value the schema refuses fails the trial with the
schema's message (never a silently different run).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ctvlp.config import JobSpec, settable_dict, spec_from_dict


@dataclass(frozen=True)
class Objective:
    """What the sweep optimises.

    Attributes:
        name: the kind asked for ("normality_auc", "recon_loss" or "zero_shot_auc").
        metric: the reported metric key Tune ranks on.
        mode: "max" or "min".
    """

    name: str
    metric: str
    mode: str


OBJECTIVES = {
    "normality_auc": Objective("normality_auc", "val_normality_auc", "max"),
    "recon_loss": Objective("recon_loss", "val_recon_loss", "min"),
    "zero_shot_auc": Objective("zero_shot_auc", "val_zero_shot_auc", "max"),
}
_PHASE_OBJECTIVES = {3: ("normality_auc", "recon_loss"), 2: ("zero_shot_auc",), 4: ("zero_shot_auc",)}


def resolve_objective(phase: int, objective: str) -> Objective:
    """``tune.objective`` for ``tune.phase``; "auto" = normality AUC (phase 3) or zero-shot AUC (2, 4)."""
    if phase not in _PHASE_OBJECTIVES:
        raise ValueError(f"tune.phase must be 2, 3 or 4, got {phase!r}")
    allowed = _PHASE_OBJECTIVES[phase]
    name = allowed[0] if objective == "auto" else objective
    if name not in allowed:
        raise ValueError(f"tune.objective {objective!r} does not apply to phase {phase}; "
                         f"allowed: auto, {', '.join(allowed)}")
    return OBJECTIVES[name]


def build_space(space: dict[str, Any]) -> dict[str, Any]:
    """``tune.space`` (``{key: ParamSpace}``) -> ``{key: ray.tune domain}``.

    Raises ValueError for an empty space or a distribution missing its bounds/values.
    """
    from ray import tune

    if not space:
        raise ValueError("tune.space is empty: give at least one spec key to sweep, e.g. "
                         "model.vq.beta: {kind: uniform, low: 0.1, high: 1.0}")
    out = {}
    for key, p in space.items():
        kind, values, low, high = p.kind, getattr(p, "values", None), getattr(p, "low", None), getattr(p, "high", None)
        if kind == "choice":
            if not values:
                raise ValueError(f"tune.space.{key}: kind 'choice' needs a non-empty 'values' list")
            out[key] = tune.choice(list(values))
            continue
        if low is None or high is None or not low < high:
            raise ValueError(f"tune.space.{key}: kind {kind!r} needs low < high, got low={low}, high={high}")
        if kind == "uniform":
            out[key] = tune.uniform(float(low), float(high))
        elif kind == "loguniform":
            if low <= 0:
                raise ValueError(f"tune.space.{key}: loguniform needs low > 0, got {low}")
            out[key] = tune.loguniform(float(low), float(high))
        elif kind == "randint":  # inclusive of high, as the spec reads ("1..8"); Tune's is exclusive
            out[key] = tune.randint(int(low), int(high) + 1)
        else:
            raise ValueError(f"tune.space.{key}: unknown kind {kind!r}; use choice, uniform, loguniform or randint")
    return out


def make_searcher(searcher: str, seed: int, max_concurrent: int):
    """Random search (Tune's variant generator) or Optuna TPE, both seeded with ``seed``: the same
    spec samples the same trials. Metric and mode are left to ``TuneConfig`` (Tune refuses both).

    ``max_concurrent`` goes into the variant generator itself: Tune ignores
    ``TuneConfig.max_concurrent_trials`` for a generator passed in (it only wraps ``Searcher``s,
    such as Optuna's, in a ``ConcurrencyLimiter``), and trials beyond what the cluster fits
    would wait for their Train workers until the 60 s worker-group timeout fails them.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if searcher == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    if searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    raise ValueError(f"tune.searcher must be 'random' or 'optuna', got {searcher!r}")


def make_scheduler(grace_period_steps: int, max_steps: int, reduction_factor: int):
    """ASHA on the optimiser step (``time_attr="step"``, the runner's ``TrainState.step``).

    Rungs at ``grace * rf**k <= max_steps``; metric and mode come from ``TuneConfig``.
    """
    from ray.tune.schedulers import ASHAScheduler

    if grace_period_steps > max_steps:
        raise ValueError(f"tune.grace_period_steps ({grace_period_steps}) exceeds tune.max_steps ({max_steps})")
    return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=grace_period_steps,
                         reduction_factor=reduction_factor)


def apply_params(base: JobSpec | dict, params: dict[str, Any]) -> JobSpec:
    """The base spec with each dotted key of ``params`` set, validated (raises SpecError)."""
    tree = copy.deepcopy(base if isinstance(base, dict) else settable_dict(base))
    for key, value in params.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"tune.space key {key!r}: {part!r} is not a section of the spec")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"tune.space key {key!r} is not a spec field")
        node[parts[-1]] = value.item() if hasattr(value, "item") else value  # numpy scalars -> YAML-safe
    return spec_from_dict(tree)
