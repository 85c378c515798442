"""Corpus presets: volume size, spacing, noise, lesion visibility and split fractions.

A preset fixes everything that decides how hard the corpus is, so a corpus is named by
``(preset, num_studies, seed)``. The field of view stays realistic (~340-440 mm in-plane, a
chest-abdomen-pelvis scan of ~560-640 mm) at every size: small volumes coarsen the spacing
instead of cropping the body. Four presets ship:

- ``tiny``: ~32 x 32 x 40 voxels (11-14 mm in-plane, ~15 mm slices) for unit tests;
- ``demo``: 64 x 64 x 64 voxels (5.3-6.9 mm, ~9.4 mm) for the end-to-end demo, balanced
  prevalence and at least 20 positives per disease in the test split;
- ``compare``: the demo's grid with every finding graded from subtle to obvious
  (``lesions.GRADED_PARAMS``), for the method comparison (``jobs/compare.py``);
- ``realistic``: 512 x 512 x 280-320 voxels (0.66-0.86 mm, 1.75-2.3 mm) for benchmarks.

Noise is the standard deviation of the added Gaussian noise in HU. Coarse voxels average many
fine ones, so the small presets carry less noise than a 0.7 mm reconstruction (physically the
noise falls with the square root of the voxel volume).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Preset:
    """Generation settings of one corpus size/difficulty.

    Attributes:
        name: preset name.
        xy_size: in-plane voxels (Rows = Columns).
        z_size: (min, max) number of slices, drawn per volume.
        fov_mm: (min, max) reconstruction diameter in mm; in-plane spacing = fov / xy_size.
        scan_length_mm: (min, max) craniocaudal coverage; slice spacing = length / slices.
        noise_hu: (min, max) Gaussian noise standard deviation in HU, drawn per volume.
        min_radius_vox: smallest radius of any structure, in units of the largest voxel side, so
            that thin organs (adrenals, portal vein) keep voxels on coarse grids.
        lesion_min_vox: scales each disease's smallest visible lesion radius (in units of the
            largest voxel side); 1.0 keeps lesions just visible, larger values make them easier.
        prevalence: "natural" (each disease's own rate, lesions.DISEASE_PARAMS) or "balanced".
        balanced_rate: per-disease rate under "balanced".
        min_test_positives: per disease, top up the test split to at least this many positives.
        test_fraction / valid_fraction: share of studies (by patient) in test / validation;
            validation is written only with the three-way split layout.
        extra_study_probs: probabilities of a patient having 2, 3 studies (else 1).
        second_recon_prob: probability that a study has a second reconstruction (volume _2).
        findings: the disease parameter table (``lesions.PARAM_TABLES``): "default", or
            "graded" (every finding from subtle to obvious; the ``compare`` preset).
    """

    name: str
    xy_size: int
    z_size: tuple[int, int]
    fov_mm: tuple[float, float] = (340.0, 440.0)
    scan_length_mm: tuple[float, float] = (560.0, 640.0)
    noise_hu: tuple[float, float] = (3.0, 6.0)
    min_radius_vox: float = 0.7
    lesion_min_vox: float = 1.0
    prevalence: str = "natural"
    balanced_rate: float = 0.25
    min_test_positives: int = 0
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    extra_study_probs: tuple[float, float] = (0.2, 0.05)
    second_recon_prob: float = 0.1
    findings: str = "default"

    def __post_init__(self) -> None:
        if self.xy_size < 16 or self.z_size[0] < 16:
            raise ValueError(f"preset {self.name!r}: volumes need at least 16 voxels per side")
        if self.z_size[0] > self.z_size[1]:
            raise ValueError(f"preset {self.name!r}: z_size {self.z_size} is not (min, max)")
        if self.prevalence not in ("natural", "balanced"):
            raise ValueError(f"prevalence must be 'natural' or 'balanced', got {self.prevalence!r}")
        if not 0.0 < self.test_fraction < 1.0 or not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1) and valid_fraction in [0, 1)")
        if self.findings not in ("default", "graded"):
            raise ValueError(f"findings must be 'default' or 'graded', got {self.findings!r}")
        if not 0.0 <= self.balanced_rate <= 1.0:
            raise ValueError(f"balanced_rate must be in [0, 1], got {self.balanced_rate}")


PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", xy_size=32, z_size=(38, 42), noise_hu=(3.0, 6.0)),
    "demo": Preset(
        name="demo", xy_size=64, z_size=(64, 64), noise_hu=(4.0, 8.0), lesion_min_vox=2.5,
        prevalence="balanced", balanced_rate=0.25, min_test_positives=20, test_fraction=0.35,
        extra_study_probs=(0.15, 0.0), second_recon_prob=0.0,
    ),
    # The method comparison (jobs/compare.py): the demo's grid and balance, findings graded from
    # subtle to obvious (lesions.GRADED_PARAMS) and no size floor beyond each finding's own, so
    # that few findings sit at the ceiling or at chance (bench/results/methods.md).
    "compare": Preset(
        name="compare", xy_size=64, z_size=(64, 64), noise_hu=(4.0, 8.0), lesion_min_vox=1.0,
        prevalence="balanced", balanced_rate=0.25, min_test_positives=20, test_fraction=0.35,
        extra_study_probs=(0.15, 0.0), second_recon_prob=0.0, findings="graded",
    ),
    "realistic": Preset(
        name="realistic", xy_size=512, z_size=(280, 320), noise_hu=(8.0, 16.0),
        second_recon_prob=0.0,
    ),
}


def get_preset(name: str | Preset, **overrides: object) -> Preset:
    """Preset by name (or as given), with field overrides, e.g. ``get_preset("tiny", xy_size=48)``."""
    if isinstance(name, Preset):
        base = name
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(Preset)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown preset field(s) {unknown}; known: {sorted(known)}")
    return replace(base, **overrides) if overrides else base
