"""tune.space: spec space -> Tune domains, searchers, ASHA, objectives, applying sampled values."""

from __future__ import annotations

import numpy as np
import pytest
from ray import tune

from ctvlp.config import SpecError, load_spec
from ctvlp.config.schema import ParamSpace
from tune import space


@pytest.fixture(scope="module")
def base():
    return load_spec("jobs/specs/tune_debug.yaml")


@pytest.mark.parametrize("param, domain, check", [
    (ParamSpace(kind="choice", values=[32, 64, 100]), tune.search.sample.Categorical,
     lambda d: d.categories == [32, 64, 100]),
    (ParamSpace(kind="uniform", low=0.1, high=1.0), tune.search.sample.Float,
     lambda d: (d.lower, d.upper) == (0.1, 1.0) and isinstance(d.sampler, tune.search.sample.Float._Uniform)),
    (ParamSpace(kind="loguniform", low=0.01, high=0.2), tune.search.sample.Float,
     lambda d: isinstance(d.sampler, tune.search.sample.Float._LogUniform)),
    (ParamSpace(kind="randint", low=1, high=4), tune.search.sample.Integer,
     lambda d: (d.lower, d.upper) == (1, 5)),  # the spec's high is inclusive, Tune's exclusive
])
def test_build_space_maps_each_kind(param, domain, check):
    out = space.build_space({"model.vq.beta": param})
    assert isinstance(out["model.vq.beta"], domain) and check(out["model.vq.beta"])


def test_randint_samples_reach_the_inclusive_high():
    dom = space.build_space({"k": ParamSpace(kind="randint", low=1, high=2)})["k"]
    draws = {dom.sample() for _ in range(200)}
    assert draws == {1, 2}


def test_empty_space_fails_with_the_fix():
    with pytest.raises(ValueError, match="tune.space is empty"):
        space.build_space({})


@pytest.mark.parametrize("phase, asked, metric, mode", [
    (3, "auto", "val_normality_auc", "max"), (3, "recon_loss", "val_recon_loss", "min"),
    (2, "auto", "val_zero_shot_auc", "max"), (4, "zero_shot_auc", "val_zero_shot_auc", "max")])
def test_objective_per_phase(phase, asked, metric, mode):
    obj = space.resolve_objective(phase, asked)
    assert (obj.metric, obj.mode) == (metric, mode)


@pytest.mark.parametrize("phase, asked", [(2, "normality_auc"), (3, "zero_shot_auc"), (1, "auto")])
def test_objective_that_does_not_apply_is_refused(phase, asked):
    with pytest.raises(ValueError, match="tune"):
        space.resolve_objective(phase, asked)


def test_searchers_and_asha():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ray.tune.search import BasicVariantGenerator

    gen = space.make_searcher("random", 0, 2)
    assert isinstance(gen, BasicVariantGenerator) and gen.max_concurrent == 2  # Tune would not limit it
    assert isinstance(space.make_searcher("optuna", 0, 2), OptunaSearch)
    with pytest.raises(ValueError, match="random' or 'optuna"):
        space.make_searcher("grid", 0, 1)
    asha = space.make_scheduler(2, 8, 2)
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "step"
    assert [r[0] for r in asha._brackets[0]._rungs] == [8, 4, 2]  # grace * rf**k up to max_t
    with pytest.raises(ValueError, match="exceeds tune.max_steps"):
        space.make_scheduler(9, 8, 2)


def test_apply_params_sets_and_validates(base):
    spec = space.apply_params(base, {"model.vq.codebook_size": np.int64(32), "model.vq.beta": 0.5})
    assert spec.model.vq.codebook_size == 32 and type(spec.model.vq.codebook_size) is int
    assert spec.model.vq.beta == 0.5 and base.model.vq.beta == 0.25  # the base is not mutated
    with pytest.raises(ValueError, match="not a spec field"):
        space.apply_params(base, {"model.vq.nope": 1})
    with pytest.raises(SpecError, match="codebook_size"):
        space.apply_params(base, {"model.vq.codebook_size": -3})
