"""All four phases in order, each starting from the exports of the earlier ones.

Phase references in the spec (``phases.phase2.init.vision_encoder: phase1``, ...) resolve to the
earlier phases' export URIs (``jobs.plan.resolve_phase``); each phase's resolved spec, with those
URIs, is written into its checkpoints and export. Rerunning the pipeline with the same spec resumes
the first unfinished phase (finished ones restore their final checkpoint and re-export at once).

Usage: ``python jobs/pipeline.py --spec jobs/specs/<run>.yaml [--dry-run] [key=value ...]``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

from jobs import common  # noqa: E402
from jobs.launch import describe, print_dry_run, run_phase  # noqa: E402
from jobs.plan import PHASES, resolve_phase  # noqa: E402


def run_pipeline(spec, phases: tuple[int, ...] = PHASES, **run_kwargs) -> dict:
    """Train ``phases`` in order; returns ``{phase: PhaseResult}``."""
    if list(phases) != sorted(set(phases)):
        raise ValueError(f"phases must be increasing and unique, got {phases}")
    results = {}
    for phase in phases:
        print(describe(resolve_phase(spec, phase), phase), flush=True)
        results[phase] = run_phase(spec, phase, **run_kwargs)
        print(f"phase {phase} done: export {results[phase].export_uri}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    spec, args = common.parse_cli("Train the four ctvlp phases in order on Ray Train.", argv)
    if args.dry_run:
        print_dry_run(spec, PHASES)
        common.preflight_spec(spec, dry_run=True, phases=PHASES)
        return 0
    common.preflight_spec(spec, phases=PHASES)
    common.init_ray()
    common.preflight_cluster(spec, phases=PHASES)
    print(common.describe_ctvlp(), flush=True)
    results = run_pipeline(spec)
    print("outputs (each export: model.safetensors, config.json, README.md model card):", flush=True)
    for phase, result in results.items():
        print(f"  phase {phase}: {result.export_uri}  (run {result.run_uri})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
