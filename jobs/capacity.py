"""Capacity plan: wall time and cost of ingest, the four phases and evaluation on a stated cluster.

    python -m jobs.capacity [--plan PATH] [--json] [key=value ...]

Inputs: a :class:`CapacityPlan` (YAML ``--plan`` and/or dotted overrides: the dataset, the
cluster's node types, prices and spot share, storage prices) and the job spec it names, whose
preset (crop, M) and schedule (epochs, global batch, phase 3 on cached tokens) are what is costed.
Figures come from ``bench/results``, each labelled with its source; a figure no benchmark has
measured on the planned hardware is an **estimate** and says so (``Figure.source``):

| figure | measured by | fallback estimate |
|---|---|---|
| ingest CPU stage, volumes per CPU-second (volumes/s per core in older results) | ``bench/ingest.py`` (``ingest.json``) | - |
| loader, samples per CPU-second | ``bench/loader.py`` (``loader.json``) | - |
| phase-3 cache speed-up and break-even | ``bench/phase3_cache.py`` (``phase3_cache.json``) | - |
| GPU samples/s per phase, evaluation | ``bench/gpu_acceptance.py`` on a GPU (``gpu_acceptance.json``) | 45 samples/s bare encoder (96 x 256 x 384, bf16, H200, our earlier measurement) x a per-phase ratio (``gpu_ratio``) |
| segmentation, GPU-seconds per volume | ``segmentation.json`` when a benchmark writes one | ``segmentation_s_per_volume`` |
| shard MB per study | ``loader.json`` (bytes per voxel of a real crop) | - |

Stages run one after another (ingest, then phases 1-4, then evaluation); each is costed on the
nodes it occupies for its wall time. The loader check compares the CPUs a phase's data pipeline
needs with the GPU nodes' CPUs: a phase that needs more is data-bound and its wall time grows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ENCODER_H200_SPS = 45.0  # bare 3D ResNet fwd+bwd+AdamW, 96 x 256 x 384, bf16, one H200: earlier measurement


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeType(_Strict):
    name: str = Field(description="instance type, for the printout")
    gpus: int = Field(0, ge=0, description="GPUs per node")
    vcpus: int = Field(ge=1, description="vCPUs per node (one loader/ingest worker process each)")
    on_demand_per_hour: float = Field(gt=0, description="USD per node-hour on demand")
    spot_per_hour: float = Field(gt=0, description="USD per node-hour on spot")


class Dataset(_Strict):
    num_volumes: int = Field(272_124, ge=1, description="CT volumes to ingest (MedVL-CT69K's size)")
    train_fraction: float = Field(0.9, gt=0, le=1, description="share of the volumes in the train split")
    valid_fraction: float = Field(0.05, ge=0, lt=1, description="share in the valid split (validated each epoch)")
    test_fraction: float = Field(0.05, ge=0, lt=1, description="share in the test split (evaluated once)")
    raw_mb_per_volume: float = Field(68.0, gt=0, description="stored input per volume (.nii.gz image + mask), MB")
    segment: bool = Field(True, description="run TotalSegmentator in ingest (no supplied masks)")


class Cluster(_Strict):
    gpu_node: NodeType = NodeType(name="p5en.48xlarge (8 x H200)", gpus=8, vcpus=192,
                                  on_demand_per_hour=63.30, spot_per_hour=25.30)
    num_gpus: int = Field(16, ge=1, description="GPUs training (Ray Train workers)")
    cpu_node: NodeType = NodeType(name="c7i.16xlarge", vcpus=64, on_demand_per_hour=2.856, spot_per_hour=1.10)
    num_cpu_nodes: int = Field(8, ge=1, description="CPU nodes of the ingest CPU stage")
    spot_fraction: float = Field(0.7, ge=0, le=1, description="share of node-hours bought on spot")
    gpu_scaling: float = Field(0.9, gt=0, le=1, description="data-parallel efficiency at num_gpus")
    loader_vcpus_per_gpu: float = Field(20.0, gt=0, description="GPU-node vCPUs the data pipeline may use per GPU")


class StoragePrices(_Strict):
    gb_month: float = Field(0.023, ge=0, description="USD per GB-month (S3 Standard)")
    months: float = Field(3.0, ge=0, description="months the inputs, shards and caches are kept")
    put_per_1000: float = Field(0.005, ge=0, description="USD per 1000 PUT/LIST requests")
    get_per_1000: float = Field(0.0004, ge=0, description="USD per 1000 GET/HEAD requests")


class CapacityPlan(_Strict):
    job_spec: str | None = Field(None, description="job spec whose preset and schedule are costed (None: defaults)")
    job_overrides: list[str] = Field(["data.preset=paper-abdomen", "phases.phase3_cached_tokens=true"],
                                     description="dotted overrides of the job spec")
    dataset: Dataset = Dataset()
    cluster: Cluster = Cluster()
    storage: StoragePrices = StoragePrices()
    gpu_ratio: dict[str, float] = Field(
        {"phase1": 0.45, "phase2": 0.6, "phase3_encoder": 2.5, "phase4": 0.5, "eval": 3.0},
        description="estimated samples/s of each step relative to the bare encoder's fwd+bwd (used "
                    "without gpu_acceptance.json): phase 1 runs two encoders, phases 2/4 add BERT "
                    "and pooling, phase 3 and evaluation run the encoder forward only")
    segmentation_s_per_volume: float = Field(20.0, gt=0, description="estimated TotalSegmentator GPU-seconds per volume")
    results_dir: str = Field(str(RESULTS), description="where the benchmark figures are read")


@dataclass(frozen=True)
class Figure:
    value: float
    source: str  # "measured: <file>" or "estimate: <why>"


@dataclass(frozen=True)
class Stage:
    name: str
    nodes: str
    wall_h: float
    node_hours: float
    cost: float
    figure: str


def _read(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def figures(plan: CapacityPlan, num_anatomies: int) -> dict[str, Figure]:
    """Every per-unit figure the plan uses, with its source."""
    res = Path(plan.results_dir)
    out: dict[str, Figure] = {}
    ingest = _read(res, "ingest.json")
    if not ingest:
        raise ValueError(f"no ingest.json under {res}: run bench/ingest.py first")
    # volumes per CPU-second where the bench wrote it: wall-clock rates on a shared machine are
    # slowed by other users' processes, the worker's own CPU time much less
    per_cpu = "volumes_per_cpu_s" in ingest
    out["ingest"] = Figure(ingest["volumes_per_cpu_s" if per_cpu else "volumes_per_s_per_core"],
                           f"measured: ingest.json ({'per CPU-second' if per_cpu else 'per core'}, 512x512x~300 "
                           f"chest CT, load {ingest.get('load_avg_1min', float('nan')):.1f})")
    loader = _read(res, "loader.json")
    if not loader or not loader.get("ours"):
        raise ValueError(f"no loader.json under {res}: run bench/loader.py first")
    out["loader"] = Figure(loader["ours"]["samples_per_cpu_s"],
                           "measured: loader.json (samples per CPU-second, all processes, chest crop)")
    voxels = math.prod(loader["crop_size"])
    out["bytes_per_voxel"] = Figure(loader["shards_mb_per_study"] * 1e6 / (voxels * 1.28),
                                    "measured: loader.json (stored crop ~1.28 x the train crop)")
    gpu = _read(res, "gpu_acceptance.json")
    m = 16 if num_anatomies > 4 else 4
    for name, ratio in plan.gpu_ratio.items():
        entry = (gpu or {}).get("entries", {}).get(f"{name.removesuffix('_encoder')}/M{m}")
        if entry and name != "phase3_encoder":
            out[name] = Figure(entry["samples_per_s"], "measured: gpu_acceptance.json")
        else:
            out[name] = Figure(ENCODER_H200_SPS * ratio, f"estimate: {ENCODER_H200_SPS:g}/s bare encoder (H200) x {ratio:g}")
    cache = (_read(res, "phase3_cache.json") or {}).get("r18")
    if cache:
        out["phase3_cache_speedup"] = Figure(cache["speedup"], "measured on CPU: phase3_cache.json (r18 size)")
        out["phase3_windows_per_study"] = Figure(cache["instances"] / cache["studies"] / cache["num_anatomies"]
                                                 * num_anatomies, "measured: phase3_cache.json (instances per study)")
    else:
        out["phase3_cache_speedup"] = Figure(10.0, "estimate: the issue's goal")
        out["phase3_windows_per_study"] = Figure(num_anatomies, "estimate: one window per anatomy")
    seg = _read(res, "segmentation.json")
    out["segmentation"] = Figure(seg["gpu_s_per_volume"], "measured: segmentation.json") if seg else Figure(
        plan.segmentation_s_per_volume, "estimate: segmentation_s_per_volume")
    return out


def _price(node: NodeType, spot_fraction: float) -> float:
    return spot_fraction * node.spot_per_hour + (1 - spot_fraction) * node.on_demand_per_hour


def plan_stages(plan: CapacityPlan, job: Any) -> tuple[list[Stage], dict[str, Any]]:
    """The stages of the run with their wall time and cost, and the storage bill."""
    ds, cl = plan.dataset, plan.cluster
    fig = figures(plan, job.data.num_anatomies)
    gpu_nodes = math.ceil(cl.num_gpus / max(1, cl.gpu_node.gpus))
    gpu_price, cpu_price = _price(cl.gpu_node, cl.spot_fraction), _price(cl.cpu_node, cl.spot_fraction)
    n_train = ds.num_volumes * ds.train_fraction
    stages = []
    cores = cl.num_cpu_nodes * cl.cpu_node.vcpus
    wall = ds.num_volumes / (fig["ingest"].value * cores) / 3600
    stages.append(Stage("ingest CPU stage", f"{cl.num_cpu_nodes} x {cl.cpu_node.name}", wall,
                        wall * cl.num_cpu_nodes, wall * cl.num_cpu_nodes * cpu_price, fig["ingest"].source))
    if ds.segment:
        wall = ds.num_volumes * fig["segmentation"].value / cl.num_gpus / 3600
        stages.append(Stage("segmentation (TotalSegmentator)", f"{gpu_nodes} x {cl.gpu_node.name}", wall,
                            wall * gpu_nodes, wall * gpu_nodes * gpu_price, fig["segmentation"].source))
    loader_sps = fig["loader"].value * cl.loader_vcpus_per_gpu * cl.num_gpus  # what the CPUs can feed
    for p in (1, 2, 3, 4):
        epochs = job.phase(p).epochs
        key = f"phase{p}" if p != 3 else "phase3_encoder"
        gpu_sps = fig[key].value * cl.num_gpus * cl.gpu_scaling
        sps = min(gpu_sps, loader_sps)
        if p == 3 and job.phases.phase3_cached_tokens:  # tokens, not volumes: no loader bound
            cache_h = n_train * fig["phase3_windows_per_study"].value / (fig["eval"].value * cl.num_gpus) / 3600
            epoch_h = n_train / gpu_sps / 3600 / fig["phase3_cache_speedup"].value
            wall = cache_h + epochs * epoch_h
            source = f"{fig[key].source}; cache speed-up {fig['phase3_cache_speedup'].source}"
        else:
            wall = epochs * n_train / sps / 3600
            source = fig[key].source + ("; DATA-BOUND: loader" if loader_sps < gpu_sps else "")
        if p in (2, 4):  # validation every epoch on the valid split, forward only
            wall += epochs * ds.num_volumes * ds.valid_fraction / (fig["eval"].value * cl.num_gpus) / 3600
        stages.append(Stage(f"phase {p} ({epochs} epochs)", f"{gpu_nodes} x {cl.gpu_node.name}", wall,
                            wall * gpu_nodes, wall * gpu_nodes * gpu_price, source))
    wall = ds.num_volumes * ds.test_fraction * job.data.num_anatomies / (fig["eval"].value * cl.num_gpus) / 3600
    stages.append(Stage("evaluation (test split, one window per anatomy)", f"{gpu_nodes} x {cl.gpu_node.name}",
                        wall, wall * gpu_nodes, wall * gpu_nodes * gpu_price, fig["eval"].source))
    return stages, storage_bill(plan, job, fig, n_train)


def storage_bill(plan: CapacityPlan, job: Any, fig: dict[str, Figure], n_train: float) -> dict[str, Any]:
    """Bytes kept and requests made (ingest writes, per-epoch reads), priced."""
    ds, st = plan.dataset, plan.storage
    from ingest.shards import ROWS_PER_ROW_GROUP

    stored_voxels = 1.28 * math.prod(job.data.min_size)
    shard_gb = ds.num_volumes * stored_voxels * fig["bytes_per_voxel"].value / 1e9
    raw_gb = ds.num_volumes * ds.raw_mb_per_volume / 1e3
    files = max(1.0, shard_gb * 1e3 / job.ingest.shard_target_mb)
    rows_per_file = ds.num_volumes / files
    reads_per_file = 2 + 1 + math.ceil(rows_per_file / ROWS_PER_ROW_GROUP)  # 2 HEAD, footer, row groups
    epochs = sum(job.phase(p).epochs for p in (1, 2, 4)) + (0 if job.phases.phase3_cached_tokens else job.phase(3).epochs)
    train_files = files * ds.train_fraction
    gets = ds.num_volumes * 2 * 3 + epochs * train_files * reads_per_file  # raw image+mask: HEAD, GET, HEAD
    puts = files * 3 + 10
    cost_gb = (shard_gb + raw_gb) * st.gb_month * st.months
    cost_req = puts / 1000 * st.put_per_1000 + gets / 1000 * st.get_per_1000
    return {"raw_gb": raw_gb, "shard_gb": shard_gb, "shard_files": files, "gets": gets, "puts": puts,
            "storage_cost": cost_gb, "request_cost": cost_req, "months": st.months}


def load_plan(path: str | None, overrides: list[str]) -> CapacityPlan:
    from ctvlp.config.loader import parse_override

    data = yaml.safe_load(Path(path).read_text()) if path else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return CapacityPlan.model_validate(data or {})


def render(plan: CapacityPlan, job: Any, stages: list[Stage], bill: dict[str, Any]) -> str:
    cl = plan.cluster
    total_h = sum(s.wall_h for s in stages)
    total = sum(s.cost for s in stages) + bill["storage_cost"] + bill["request_cost"]
    top = max(stages, key=lambda s: s.wall_h)
    lines = [f"Capacity plan: {plan.dataset.num_volumes:,} volumes, preset {job.data.preset} "
             f"(crop {tuple(job.data.crop_size)}, M = {job.data.num_anatomies}), epochs "
             f"{'/'.join(str(job.phase(p).epochs) for p in (1, 2, 3, 4))}, global batch "
             f"{job.phase(1).global_batch_size}; {cl.num_gpus} GPUs on {cl.gpu_node.name}, ingest on "
             f"{cl.num_cpu_nodes} x {cl.cpu_node.name}; spot share {cl.spot_fraction:.0%}", "",
             f"{'stage':<48} {'wall h':>8} {'node-h':>8} {'USD':>10}  source"]
    for s in stages:
        lines.append(f"{s.name:<48} {s.wall_h:8.1f} {s.node_hours:8.1f} {s.cost:10,.0f}  {s.figure}")
    lines += [f"{'storage: raw %.1f TB + shards %.1f TB for %g months' % (bill['raw_gb'] / 1e3, bill['shard_gb'] / 1e3, bill['months']):<48}"
              f" {'':>8} {'':>8} {bill['storage_cost']:10,.0f}",
              f"{'requests: %.2fM GET/HEAD, %.0fK PUT (%.0f shard files)' % (bill['gets'] / 1e6, bill['puts'] / 1e3, bill['shard_files']):<48}"
              f" {'':>8} {'':>8} {bill['request_cost']:10,.0f}",
              f"{'total':<48} {total_h:8.1f} {'':>8} {total:10,.0f}", "",
              f"Dominant stage: {top.name}, {top.wall_h / total_h:.0%} of the wall time "
              f"({top.wall_h / 24:.1f} days)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=None, help="YAML of a CapacityPlan (defaults: the docstring's cluster)")
    ap.add_argument("--json", action="store_true", help="print the stages as JSON")
    ap.add_argument("overrides", nargs="*", help="dotted key=value, e.g. cluster.num_gpus=32")
    args = ap.parse_args(argv)
    from ctvlp.config import load_spec
    from ctvlp.config.loader import format_errors

    try:
        plan = load_plan(args.plan, args.overrides)
    except ValidationError as err:
        print(format_errors(err), file=sys.stderr)
        return 2
    job = load_spec(plan.job_spec, plan.job_overrides)
    stages, bill = plan_stages(plan, job)
    if args.json:
        print(json.dumps({"stages": [s.__dict__ for s in stages], "storage": bill}, indent=1))
    else:
        print(render(plan, job, stages, bill))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "platform")]
    raise SystemExit(main())
