"""Typed job specs. See :mod:`ctvlp.config.schema` (the sections) and :mod:`ctvlp.config.loader`."""

from ctvlp.config.loader import (
    DEFAULTS_PATH,
    load_spec,
    parse_override,
    resolved_dict,
    settable_dict,
    spec_from_dict,
    spec_hash,
    to_yaml,
    write_resolved,
)
from ctvlp.config.schema import (
    CompareSpec,
    DATA_PRESETS,
    ASGSpec,
    DataSpec,
    DecoderSpec,
    DiseaseSpec,
    EvalSpec,
    IngestSpec,
    InitSpec,
    JobSpec,
    MedSLIPSpec,
    MethodsSpec,
    ModelSpec,
    PhaseSpec,
    PhasesSpec,
    ResourcesSpec,
    SpecError,
    StorageSpec,
    TextSpec,
    TuneSpec,
    VQSpec,
    is_phase_ref,
)

__all__ = [n for n in dir() if not n.startswith("_")]
