"""Corpus generation: plan (patients, splits, findings), render each study, write the layout.

Determinism: every random draw comes from a Generator seeded by ``(seed, purpose, index)``
(plan; patient anatomy; study findings and grid; volume noise and header), so a study's bytes
do not depend on how many workers ran or in which order.

Split mapping (``layout``): ``"ctrate"`` (default) writes our *train* split as CT-RATE's
``dataset/train`` and our *test* split as CT-RATE's ``dataset/valid`` (CT-RATE's validation set
is what papers report as their test set); validation is carved from train by patient
downstream, exactly as for real CT-RATE. ``"three-way"`` writes ``dataset/{train,valid,test}``
with ``{train,validation,test}_*.csv`` and ``{train,valid,test}_predicted_labels.csv``.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ctvlp.diseases import SYNTHETIC
from ctvlp.synthetic.findings_image import IMAGE_PLANTERS, ImageContext
from ctvlp.synthetic.findings_shape import SHAPE_PLANTERS, ShapeContext
from ctvlp.synthetic.lesions import DISEASE_PARAMS, PARAM_TABLES
from ctvlp.synthetic.phantom import finish, render, sample_anatomy
from ctvlp.synthetic.presets import Preset, get_preset
from ctvlp.synthetic.reports import write_report
from ctvlp.synthetic.shapes import Grid
from ctvlp.synthetic.tissue import sample_tissue
from ctvlp.synthetic import writer

DISEASES = [d.name for d in SYNTHETIC]
_PLAN, _PATIENT, _STUDY, _VOLUME, _DEMOGRAPHICS = range(5)  # seed purposes


@dataclass
class StudyPlan:
    """One study to generate. ``patient``/``study`` number it within its split (1-based / 0-based)."""

    index: int
    patient_index: int
    split: str
    patient: int
    study: int
    diseases: list[str]
    n_volumes: int


def _rng(seed: int, purpose: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *index])


def plan_corpus(num_studies: int, seed: int, preset: Preset, layout: str = "ctrate") -> list[StudyPlan]:
    """Patients (1-3 studies each), disjoint splits by patient, per-study diseases."""
    if num_studies < 1:
        raise ValueError(f"num_studies must be >= 1, got {num_studies}")
    if layout not in writer.LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(writer.LAYOUTS)}, got {layout!r}")
    rng = _rng(seed, _PLAN)
    p2, p3 = preset.extra_study_probs
    sizes = []
    while sum(sizes) < num_studies:
        r = rng.random()
        sizes.append(min(3 if r < p3 else (2 if r < p2 + p3 else 1), num_studies - sum(sizes)))
    split_of = _assign_splits(sizes, preset, layout, rng)
    plans, counters = [], {}
    for pid, k in enumerate(sizes):
        split = split_of[pid]
        counters[split] = counters.get(split, 0) + 1
        for s in range(k):
            plans.append(StudyPlan(len(plans), pid, split, counters[split], s, [], 1))
    rates = np.array([preset.balanced_rate if preset.prevalence == "balanced" else DISEASE_PARAMS[d].prevalence
                      for d in DISEASES])
    for plan in plans:
        plan.diseases = [d for d, hit in zip(DISEASES, rng.random(len(DISEASES)) < rates) if hit]
        plan.n_volumes = 2 if rng.random() < preset.second_recon_prob else 1
    _top_up(plans, preset.min_test_positives, rng)
    return plans


def _assign_splits(sizes: list[int], preset: Preset, layout: str, rng: np.random.Generator) -> list[str]:
    """Whole patients to test, then valid (three-way layout only), the rest to train."""
    n = sum(sizes)
    targets = [("test", preset.test_fraction)]
    if layout == "three-way":
        targets.append(("valid", preset.valid_fraction))
    split_of = ["train"] * len(sizes)
    order = list(rng.permutation(len(sizes)))
    for split, fraction in targets:
        want, got = int(round(fraction * n)), 0
        while order and got < want and len(order) > 1:
            pid = int(order.pop())
            split_of[pid], got = split, got + sizes[pid]
    return split_of


def _top_up(plans: list[StudyPlan], minimum: int, rng: np.random.Generator) -> None:
    """Make every disease positive in at least ``minimum`` test studies (demo preset)."""
    test = [p for p in plans if p.split == "test"]
    if minimum <= 0:
        return
    if len(test) < minimum:
        raise ValueError(f"min_test_positives={minimum} needs at least that many test studies, "
                         f"got {len(test)}: raise num_studies or test_fraction")
    for disease in DISEASES:
        negatives = [p for p in test if disease not in p.diseases]
        missing = minimum - (len(test) - len(negatives))
        for i in rng.permutation(len(negatives))[: max(missing, 0)]:
            negatives[int(i)].diseases.append(disease)
    for p in test:
        p.diseases = [d for d in DISEASES if d in p.diseases]


def _grid(preset: Preset, anatomy, rng: np.random.Generator) -> tuple[Grid, float]:
    """The study's voxel grid (FOV kept, spacing coarsened for small presets) and its FOV.

    The reconstruction circle always holds the whole body (widest half-width + 15 mm), as a
    technologist would choose it; the body sits up to 10 mm off-centre.
    """
    nz = int(rng.integers(preset.z_size[0], preset.z_size[1] + 1))
    half = float(max(anatomy.body.a.max(), anatomy.body.b.max())) * 1.04 + 25.0
    fov = float(max(rng.uniform(*preset.fov_mm), 2.0 * half))
    sxy, sz = round(fov / preset.xy_size, 6), round(anatomy.length / nz, 6)
    origin = (-0.5 * fov + 0.5 * sxy + rng.uniform(-10, 10), -0.5 * fov + 0.5 * sxy + rng.uniform(-10, 10), 0.5 * sz)
    return Grid((preset.xy_size, preset.xy_size, nz), (sxy, sxy, sz), origin), fov


def make_study(plan: StudyPlan, seed: int, preset: Preset, root: Path, layout: str, ctrate_headers: bool) -> dict:
    """Render, plant, report and write one study; returns its CSV rows and findings."""
    prng = _rng(seed, _PATIENT, plan.patient_index)
    anatomy = sample_anatomy(prng, float(prng.uniform(*preset.scan_length_mm)))
    rng = _rng(seed, _STUDY, plan.index)
    grid, fov = _grid(preset, anatomy, rng)
    tissue = sample_tissue(rng)
    min_radius = preset.min_radius_vox * grid.max_spacing
    params = PARAM_TABLES[preset.findings]
    sctx = ShapeContext(anatomy, tissue, rng, grid.max_spacing, min_radius, preset.lesion_min_vox, params)
    findings = [planter(sctx) for name, planter in SHAPE_PLANTERS.items() if name in plan.diseases]
    canvas = render(anatomy, grid, tissue, min_radius, rng)
    ictx = ImageContext(canvas, rng, preset.lesion_min_vox, params)
    findings += [planter(ictx) for name, planter in IMAGE_PLANTERS.items() if name in plan.diseases]
    findings.sort(key=lambda f: DISEASES.index(f.disease))
    report = write_report(findings, bool(tissue["contrast"]), rng)
    split_dir = writer.LAYOUTS[layout][plan.split]
    demo = _demographics(seed, plan.patient_index)
    rows = {"reports": [], "metadata": [], "labels": []}
    for recon in range(1, plan.n_volumes + 1):
        name = writer.volume_name(split_dir, plan.patient, plan.study, recon)[2] + ".nii.gz"
        meta = _write_volume(canvas, fov, preset, root, split_dir, plan, recon, seed, ctrate_headers)
        rows["metadata"].append({"VolumeName": name, **demo, **meta})
        rows["reports"].append({"VolumeName": name, "Findings_EN": report[0], "Impressions_EN": report[1]})
        rows["labels"].append({"VolumeName": name, **{d: int(d in plan.diseases) for d in DISEASES}})
    return {"split": plan.split, "rows": rows, "findings": [asdict(f) for f in findings]}


def _demographics(seed: int, patient_index: int) -> dict[str, object]:
    rng = _rng(seed, _DEMOGRAPHICS, patient_index)
    return {"Manufacturer": str(rng.choice(["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA"])),
            "PatientSex": str(rng.choice(["M", "F"])), "PatientAge": f"{int(rng.integers(25, 90)):03d}Y"}


def _write_volume(canvas, fov: float, preset: Preset, root: Path, split_dir: str, plan: StudyPlan, recon: int,
                  seed: int, ctrate_headers: bool) -> dict[str, object]:
    """Noise, scanner offset, orientation, rescale; writes image + mask; returns metadata cells."""
    rng = _rng(seed, _VOLUME, plan.index, recon)
    grid = canvas.grid
    hu = finish(canvas.hu, grid, float(rng.uniform(*preset.noise_hu)), fov, rng)
    offset = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-900, -300)])
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = np.asarray(grid.origin) + offset
    codes = writer.ORIENTATIONS[0] if rng.random() < 0.5 else writer.ORIENTATIONS[int(rng.integers(len(writer.ORIENTATIONS)))]
    slope = 1.0 if rng.random() < 0.9 else 0.5
    intercept = float(rng.choice([-1024.0, -1024.0, -1000.0, 0.0]))
    image, oriented = writer.orient(writer.quantize(hu, slope, intercept), affine, codes)
    mask, _ = writer.orient(canvas.labels, affine, codes)
    geo = writer.dicom_geometry(oriented)
    header_affine = np.eye(4) if ctrate_headers else geo.pop("_affine")
    geo.pop("_affine", None)
    img_path, mask_path = writer.volume_paths(root, split_dir, plan.patient, plan.study, recon)
    writer.write_volume(img_path, image, header_affine, None if ctrate_headers else (slope, intercept))
    writer.write_volume(mask_path, mask, header_affine, None)
    kernel = str(rng.choice(["B30f", "STANDARD", "FC18", "B70f", "LUNG"]))
    return {"ReconstructionDiameter": round(fov, 2), "ConvolutionKernel": kernel, "SliceThickness": geo["ZSpacing"],
            "Rows": image.shape[1], "Columns": image.shape[0], "NumberofSlices": image.shape[2],
            "RescaleIntercept": intercept, "RescaleSlope": slope, **geo}


def generate_corpus(out_dir: str | Path, num_studies: int, seed: int = 0, preset: str | Preset = "tiny",
                    layout: str = "ctrate", ctrate_headers: bool = False, workers: int = 1,
                    **preset_overrides: object) -> dict:
    """Generate a synthetic corpus in CT-RATE's published layout; returns (and writes) its summary.

    Args:
        out_dir: corpus root (created; existing files are overwritten).
        num_studies: number of studies (a study may have two reconstructions).
        seed: corpus seed; same arguments give identical files.
        preset: "tiny" | "demo" | "realistic" or a :class:`Preset`.
        layout: "ctrate" (train + valid, valid = our test) or "three-way".
        ctrate_headers: write CT-RATE-like wrong headers (truth only in the metadata CSV).
        workers: processes (1 = in-process).
        **preset_overrides: preset fields to override (e.g. ``xy_size=48``).
    """
    preset_obj = get_preset(preset, **preset_overrides)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plans = plan_corpus(num_studies, seed, preset_obj, layout)
    args = [(p, seed, preset_obj, root, layout, ctrate_headers) for p in plans]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(make_study, *zip(*args), chunksize=4))
    else:
        results = [make_study(*a) for a in args]
    rows = {s: {"reports": [], "metadata": [], "labels": []} for s in writer.LAYOUTS[layout]}
    for res in results:
        for key, table in res["rows"].items():
            rows[res["split"]][key] += table
    files = writer.write_tables(root, rows, layout)
    summary = _summary(plans, preset_obj, seed, layout, ctrate_headers, files)
    writer.write_summary(root, summary)  # no timings in the file: same arguments, same bytes
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}


def _summary(plans, preset, seed, layout, ctrate_headers, files) -> dict:
    splits = {}
    for split, ctrate_split in writer.LAYOUTS[layout].items():
        mine = [p for p in plans if p.split == split]
        splits[split] = {
            "written_as": ctrate_split, "patients": len({p.patient_index for p in mine}), "studies": len(mine),
            "volumes": sum(p.n_volumes for p in mine), "files": files[split],
            "positives": {d: sum(d in p.diseases for p in mine) for d in DISEASES},
        }
    return {"generator": "ctvlp.synthetic", "preset": asdict(preset), "seed": seed, "num_studies": len(plans),
            "layout": layout, "ctrate_headers": ctrate_headers, "masks": "masks/<split dir>/<patient>/<study>/<volume>.nii.gz",
            "mask_classes": "TotalSegmentator v2 total", "splits": splits}
