"""Zero-shot diagnosis of an exported model over the evaluation split, with metrics, pictures and report.

Ray Data batch inference: the split's committed shards (listed by the index) are read with
``jobs.data.read_shards`` and mapped by
:class:`ZeroShotPredictor`, a callable class (one actor per ``resources.num_workers``, one GPU each
when ``resources.use_gpu``) that loads the export once and returns, per study, the disease scores
(:mod:`ctvlp.eval.zeroshot`), the anatomy embeddings and sampled token activations. The driver
writes ``scores.csv`` and ``labels.csv`` (VolumeName x disease, empty = not evaluated), scores them
with :func:`ctvlp.eval.metrics.evaluate` (threshold on the evaluated set; also the held-out
protocol, thresholds from the valid split, when that split has shards), optionally fits the linear
probe (train split -> evaluation split), draws the pictures and writes one HTML report.

Usage: ``python jobs/evaluate.py --spec jobs/specs/<run>.yaml [--dry-run] [key=value ...]``.
``eval.model`` is an export URI or a phase reference ("phase4"), resolved to that phase's export
under the same spec.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

import numpy as np  # noqa: E402

from ctvlp.config import is_phase_ref, settable_dict, to_yaml  # noqa: E402
from ctvlp.eval import plots  # noqa: E402
from ctvlp.eval.metrics import EvalResult, evaluate, frames_from_arrays  # noqa: E402
from ctvlp.eval.probe import ProbeSet, fit_probe  # noqa: E402
from ctvlp.eval.report import write_report  # noqa: E402
from ctvlp.eval.tables import auc_with_ci, summary_line  # noqa: E402
from ingest.storage import Storage, is_s3, join  # noqa: E402
from jobs import common  # noqa: E402
from jobs.data import read_shards, shard_files, storage_of, train_shard_uris  # noqa: E402

READ_COLUMNS = ["study_id", "split", "shape", "spacing", "image", "mask", "codec", "boxes", "voxel_counts",
                "texts", "abnormal", "input_ids", "disease_labels", "meta"]
OUT_KEYS = ("embeds", "present", "abnormal", "act_orig", "act_boost", "code_counts", "scores", "labels")


# ------------------------------------------------------------------------------ model location
def resolve_model_uri(spec: Any) -> str:
    """``eval.model`` as an export URI (a phase reference resolves as jobs/pipeline.py does)."""
    ref = spec.eval.model
    if not ref:
        raise ValueError("eval.model is unset: give an export URI or a phase reference such as 'phase4'")
    if not is_phase_ref(ref):
        return ref
    from jobs.plan import export_uri, resolve_phase  # imports the runner: only when needed

    phase = int(ref[-1])
    return export_uri(resolve_phase(spec, phase), phase)


def fetch_export(uri: str, storage: Storage) -> str:
    """A local directory holding the export at ``uri`` (S3 exports are downloaded to a temp dir)."""
    if not is_s3(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"export {uri} does not exist (train the model or fix eval.model)")
        return uri
    from ctvlp.export import download_tree

    fs, path = storage.fs(uri)  # the spec's endpoint, timeouts and retries
    return str(download_tree(fs, path, tempfile.mkdtemp(prefix="ctvlp-eval-export-")))


# ----------------------------------------------------------------------------- Ray Data actor
class ZeroShotPredictor:
    """``map_batches`` callable class: shard rows -> per-study scores, labels and embeddings.

    Args:
        model_uri: export directory (local or s3://); diseases: DiseaseSpec dicts; roi: (D, H, W);
        batch_size: windows per forward pass; activation_samples: K activation values per window;
        storage: for S3 exports; num_threads: torch intra-op threads (the actor's CPUs).
    """

    def __init__(self, model_uri: str, diseases: list[dict], roi: tuple, batch_size: int,
                 activation_samples: int, storage: Storage, num_threads: int = 1,
                 bf16: str | bool = "auto") -> None:
        import torch

        from ctvlp.config import DiseaseSpec
        from ctvlp.eval.embed import EvalModel
        from ctvlp.eval.zeroshot import scoring_bank

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        from ctvlp.precision import resolve_bf16

        self.model = EvalModel.from_export(fetch_export(model_uri, storage), device,
                                           bf16=resolve_bf16(bf16, device == "cuda"))
        self.diseases = [DiseaseSpec(**d) for d in diseases]
        self.bank = scoring_bank(self.model, self.diseases)  # prompts, an existence classifier, or None
        if getattr(self.bank, "unscored", None):
            print(f"[evaluate] not in the model's finding book, not scored: {self.bank.unscored}", flush=True)
        self.roi, self.batch_size, self.k = tuple(roi), batch_size, activation_samples

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ctvlp.data import decode_sample
        from ctvlp.eval.embed import embed_studies
        from ctvlp.eval.zeroshot import label_matrix

        n = len(batch["study_id"])
        samples = [decode_sample({k: batch[k][i] for k in batch}) for i in range(n)]
        emb = embed_studies(self.model, samples, self.roi, self.batch_size, self.k)
        names = [d.name for d in self.diseases]
        scores = self.bank.score(emb) if self.bank else np.full((n, len(names)), np.nan)
        return {"study_id": np.asarray(emb.study_ids), "split": np.asarray([s["split"] for s in samples]),
                "embeds": emb.embeds, "present": emb.present,
                "abnormal": emb.abnormal.astype(np.int64), "act_orig": emb.act_orig, "act_boost": emb.act_boost,
                "code_counts": emb.code_counts, "scores": scores,
                "labels": label_matrix([s["disease_labels"] for s in samples], names)}


@dataclass
class SplitOutputs:
    """Everything inference returned for one split, rows sorted by study id ([S, ...] arrays)."""

    study_ids: list[str]
    arrays: dict[str, np.ndarray]

    def probe_set(self) -> ProbeSet:
        return ProbeSet(self.arrays["embeds"], self.arrays["present"], self.arrays["labels"])


def infer_splits(spec: Any, model_uri: str, splits: list[str], activation_samples: int = 64) -> dict[str, SplitOutputs]:
    """Ray Data batch inference over the committed shards of ``splits``, in one execution (the
    actors load the model once for all splits)."""
    storage = storage_of(spec)
    files = [f for split in splits for f in shard_files(spec, split, storage)]
    res = spec.resources
    diseases = [d.model_dump() for d in spec.eval.disease_list(spec.data)]
    ds = read_shards(files, storage, READ_COLUMNS, shuffle=False)
    ds = ds.map_batches(
        ZeroShotPredictor, batch_size=spec.eval.batch_size, batch_format="numpy",
        fn_constructor_kwargs=dict(model_uri=model_uri, diseases=diseases, roi=tuple(spec.data.eval_window),
                                   batch_size=spec.eval.batch_size, activation_samples=activation_samples,
                                   storage=storage, num_threads=int(res.cpus_per_worker), bf16=res.bf16),
        concurrency=res.num_workers, num_cpus=res.cpus_per_worker,
        num_gpus=res.gpus_per_worker if res.use_gpu else 0,
    )
    parts = progress_batches(ds.iter_batches(batch_size=spec.eval.batch_size, batch_format="numpy"),
                             sum(f.rows for f in files), f"evaluate {'+'.join(splits)}")
    if not parts:
        raise ValueError(f"splits {splits} have committed shards but no rows")
    ids = np.concatenate([p["study_id"] for p in parts]).astype(str)
    split_of = np.concatenate([p["split"] for p in parts]).astype(str)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in OUT_KEYS}
    out = {}
    for split in splits:
        rows = np.flatnonzero(split_of == split)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        if rows.size == 0:
            raise ValueError(f"split {split!r} has committed shards but no rows")
        out[split] = SplitOutputs(ids[rows].tolist(), {k: v[rows] for k, v in arrays.items()})
    return out


def progress_batches(batches, total: int, label: str, every_s: float = 30.0) -> list[dict]:
    """Collect ``batches``, printing scans done of ``total`` with the rate and an ETA every
    ``every_s`` seconds and at the end."""
    from ctvlp.tracking import eta_line

    parts, done, t0 = [], 0, time.perf_counter()
    last = t0
    for batch in batches:
        parts.append(batch)
        done += len(batch["study_id"])
        now = time.perf_counter()
        if now - last >= every_s or done >= total:
            print(eta_line(label, done, total, now - t0, "scans"), flush=True)
            last = now
    return parts


def has_split(spec: Any, split: str) -> bool:
    try:
        train_shard_uris(spec, split)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ metrics
def split_frames(out: SplitOutputs, names: list[str], key: str = "scores"):
    return frames_from_arrays(out.study_ids, names, out.arrays["labels"], out.arrays[key])


def run_probe(spec: Any, train: SplitOutputs, test: SplitOutputs, names: list[str], anatomy_of: dict) -> EvalResult:
    """Linear probe (paper Table 4): heads fitted on the train split, scored on ``test``."""
    index = [spec.data.anatomies.index(anatomy_of[n]) for n in names]
    fit = fit_probe(train.probe_set(), names, index, epochs=spec.eval.probe_epochs, seed=spec.seed)
    for name, note in fit.notes.items():
        print(f"[probe] {name}: {note}", flush=True)
    labels, scores = frames_from_arrays(test.study_ids, names, test.arrays["labels"], fit.predict(test.probe_set()))
    return evaluate(labels, scores, anatomy_of, n_bootstrap=spec.eval.bootstrap_samples, seed=spec.seed)


def output_dir(spec: Any, model_uri: str) -> str:
    """``<storage.root>/<name>-eval-<split>-<hash of model and eval section>``."""
    blob = json.dumps({"model": model_uri, "eval": settable_dict(spec)["eval"]}, sort_keys=True).encode()
    root = spec.storage.root.rstrip("/")
    return join(root, f"{spec.name}-eval-{spec.eval.split}-{hashlib.sha256(blob).hexdigest()[:10]}")


# ----------------------------------------------------------------------------------- pictures
def draw_pictures(spec: Any, out: SplitOutputs, names: list[str], anatomy_of: dict, fig_dir: Path,
                  loss_curves: dict | None = None) -> dict[str, Path]:
    """ROC curves, t-SNE (Fig. 3), activation histograms (Fig. 5), codebook usage, loss curves."""
    anatomies, a = list(spec.data.anatomies), out.arrays
    images: dict[str, Path] = {}
    labels, scores = split_frames(out, names)
    if np.isfinite(a["scores"]).any():
        images["ROC curves per anatomy (zero-shot)"] = plots.plot_roc_curves(labels, scores, anatomy_of, fig_dir / "roc.png")
    s_idx, j_idx = np.nonzero(a["present"])
    if spec.eval.tsne and s_idx.size >= 5:
        images["t-SNE of anatomy embeddings, normal vs abnormal (paper Fig. 3)"] = plots.plot_tsne(
            a["embeds"][s_idx, j_idx], a["abnormal"][s_idx, j_idx], [anatomies[j] for j in j_idx],
            fig_dir / "tsne.png", max_points=300, seed=spec.seed)
    orig, boost = {}, {}
    for j, name in enumerate(anatomies):
        o, b = a["act_orig"][:, j].ravel(), a["act_boost"][:, j].ravel()
        if np.isfinite(o).any() and np.isfinite(b).any():
            orig[name], boost[name] = o[np.isfinite(o)], b[np.isfinite(b)]
    if orig:
        images["Level-4 token activations without / with boosting (paper Fig. 5)"] = \
            plots.plot_activation_histograms(orig, boost, fig_dir / "activations.png")
    if a["code_counts"].shape[-1] > 0 and a["code_counts"].sum() > 0:
        images["VQ-VAE codebook usage per anatomy (evaluation windows)"] = plots.plot_codebook_usage(
            a["code_counts"].sum(0), anatomies, fig_dir / "codebook.png")
    if loss_curves:
        images["Training loss curves"] = plots.plot_loss_curves(loss_curves, fig_dir / "losses.png")
    return images


def tensorboard_losses(run_dirs: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    """``{"<label>/<tag>": [(step, value)]}`` of every ``*_loss`` scalar in ``<run>/tensorboard``
    of local run directories (missing ones are skipped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = {}
    for label, run_dir in run_dirs.items():
        tb = Path(run_dir) / "tensorboard"
        if is_s3(run_dir) or not tb.is_dir():
            continue
        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.endswith("_loss"):
                series[f"{label}/{tag.rsplit('/', 1)[-1]}"] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return series


def phase_run_dirs(spec: Any) -> dict[str, str]:
    """Run directories of the phases up to ``eval.model`` when it is a phase reference."""
    if not is_phase_ref(spec.eval.model):
        return {}
    from jobs.plan import export_uri, resolve_phase

    last = int(spec.eval.model[-1])
    return {f"phase{n}": export_uri(resolve_phase(spec, n), n).rsplit("/", 1)[0] for n in range(1, last + 1)}


# --------------------------------------------------------------------------------------- main
def zero_shot_tables(spec: Any, test: SplitOutputs, val: SplitOutputs | None, names: list[str],
                     anatomy_of: dict, work: Path) -> dict[str, EvalResult]:
    """Zero-shot results on the evaluated-set threshold, plus the held-out one when possible."""
    boot, seed = spec.eval.bootstrap_samples, spec.seed
    labels, scores = split_frames(test, names)
    evaluated = evaluate(labels, scores, anatomy_of, n_bootstrap=boot, seed=seed)
    evaluated.save(work / "zero_shot")
    tables = {"zero-shot (threshold on the evaluated set)": evaluated}
    if val is not None:
        vl, vs = split_frames(val, names)
        vl.to_csv(work / "val_labels.csv", na_rep="")
        vs.to_csv(work / "val_scores.csv", na_rep="")
        held = evaluate(labels, scores, anatomy_of, val_labels=vl, val_scores=vs, n_bootstrap=boot, seed=seed)
        held.save(work / "zero_shot_held_out")
        tables["zero-shot (held-out threshold: valid -> test)"] = held
        if spec.eval.threshold_protocol == "held-out":
            tables = dict(reversed(list(tables.items())))  # the asked-for protocol first
    elif spec.eval.threshold_protocol == "held-out":
        print("[evaluate] threshold_protocol 'held-out' needs valid shards; none found, so thresholds "
              "are chosen on the evaluated set", flush=True)
    return tables


def evaluate_model(spec: Any, model_uri: str | None = None, out_uri: str | None = None,
                   loss_curves: dict | None = None) -> dict[str, Any]:
    """Evaluate one export; returns {"tables", "report", "out_dir", "primary", "probe"}.

    Args:
        model_uri: export URI (default: ``eval.model`` resolved); out_uri: output directory
            (default :func:`output_dir`); loss_curves: name -> [(step, value)] for the report
            (default: the TensorBoard losses of the phase runs when ``eval.model`` is a phase ref).
    """
    t0 = time.time()
    model_uri = model_uri or resolve_model_uri(spec)
    out_uri = out_uri or output_dir(spec, model_uri)
    diseases = spec.eval.disease_list(spec.data)
    names, anatomy_of = [d.name for d in diseases], {d.name: d.anatomy for d in diseases}
    probe_on = bool(getattr(spec.eval, "probe", False))
    splits = [spec.eval.split] + (["valid"] if spec.eval.split == "test" and has_split(spec, "valid") else [])
    outs = infer_splits(spec, model_uri, splits + (["train"] if probe_on else []))
    test, val = outs[spec.eval.split], outs.get("valid") if len(splits) == 2 else None
    with tempfile.TemporaryDirectory(prefix="ctvlp-eval-") as tmp:
        work = Path(tmp) if is_s3(out_uri) else Path(out_uri)
        work.mkdir(parents=True, exist_ok=True)
        labels, scores = split_frames(test, names)
        labels.to_csv(work / "labels.csv", na_rep="")
        scores.to_csv(work / "scores.csv", na_rep="")
        has_zero_shot = bool(np.isfinite(test.arrays["scores"]).any())
        tables: dict[str, Any] = zero_shot_tables(spec, test, val, names, anatomy_of, work) if has_zero_shot else {}
        probe = None
        if probe_on or not has_zero_shot:  # a vision-only export: the probe is all it can do
            train = outs["train"] if probe_on else infer_splits(spec, model_uri, ["train"], 0)["train"]
            probe = run_probe(spec, train, test, names, anatomy_of)
            probe.save(work / "linear_probe")
            tables["linear probe (frozen vision encoder, paper Table 4)"] = probe
        if loss_curves is None:
            loss_curves = tensorboard_losses(phase_run_dirs(spec))
        images = draw_pictures(spec, test, names, anatomy_of, work / "figures", loss_curves)
        absent = {n: int(v) for n, v in zip(names, np.isnan(test.arrays["scores"]).sum(0)) if v}
        extra = {"model": model_uri, "split": f"{spec.eval.split} ({len(test.study_ids)} scans)",
                 "git commit": common.git_commit(), "wall time (s)": f"{time.time() - t0:.1f}",
                 "scans without the anatomy (not evaluated)": json.dumps(absent) if has_zero_shot else "-"}
        report = write_report(work, f"ctvlp evaluation: {spec.name}", tables, images, to_yaml(spec), extra)
        if is_s3(out_uri):
            storage = storage_of(spec)
            for f in sorted(p for p in work.rglob("*") if p.is_file()):
                storage.write_bytes(join(out_uri, f.relative_to(work).as_posix()), f.read_bytes())
    primary = next(iter(tables.values()))
    card = record_in_export(model_uri, tables, diseases, split=spec.eval.split, num_scans=len(test.study_ids),
                            report=join(out_uri, report.name), storage=storage_of(spec))
    return {"tables": tables, "primary": primary, "probe": probe, "out_dir": out_uri,
            "report": join(out_uri, report.name), "card": card}


HELD_OUT_TABLE = "zero-shot (held-out threshold: valid -> test)"


def record_in_export(model_uri: str, tables: dict[str, EvalResult], diseases: list, *, split: str,
                     num_scans: int, report: str, storage: Storage) -> str | None:
    """Write ``evaluation.json`` (diseases, thresholds, table; ``ctvlp.card.evaluation_record``)
    into the export and re-render its model card; returns the card's URI, or None when there is
    no zero-shot table or the export cannot be written (a warning says why).

    The thresholds are the held-out table's (chosen on the valid split) when there is one, else
    the evaluated set's: ``ctvlp.predict`` calls yes/no with them, as this evaluation did.
    """
    from ctvlp.card import CARD, EVALUATION, META, evaluation_record, write_card
    from ctvlp.export import CONFIG

    zero_shot = {k: v for k, v in tables.items() if k.startswith("zero-shot")}
    if not zero_shot:
        return None
    result = zero_shot.get(HELD_OUT_TABLE) or next(iter(zero_shot.values()))
    record = evaluation_record(result, diseases, split=split, num_scans=num_scans, report=report,
                               git_commit=common.git_commit())
    try:
        local = Path(tempfile.mkdtemp(prefix="ctvlp-card-")) if is_s3(model_uri) else Path(model_uri)
        if is_s3(model_uri):  # the card needs the two small JSON files, not the weights
            for name in (CONFIG, META):
                if storage.exists(join(model_uri, name)):
                    (local / name).write_bytes(storage.read_bytes(join(model_uri, name)))
        (local / EVALUATION).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        write_card(local)
        if is_s3(model_uri):
            for name in (EVALUATION, CARD):
                storage.write_bytes(join(model_uri, name), (local / name).read_bytes())
    except OSError as exc:  # a read-only export (a downloaded model): the evaluation output stands
        print(f"[evaluate] warning: could not write {EVALUATION} and the model card into {model_uri}: {exc}",
              flush=True)
        return None
    return join(model_uri, CARD)


def print_dry_run(spec: Any) -> None:
    model_uri = resolve_model_uri(spec)
    diseases = spec.eval.disease_list(spec.data)
    print(f"model        {model_uri}")
    print(f"split        {spec.eval.split}: {len(train_shard_uris(spec, spec.eval.split))} shard(s) under "
          f"{spec.data.shards_uri}")
    print(f"diseases     {len(diseases)} over {len({d.anatomy for d in diseases})} anatomies; window "
          f"{list(spec.data.eval_window)}; threshold {spec.eval.threshold_protocol}; "
          f"bootstrap {spec.eval.bootstrap_samples}")
    print(f"workers      {spec.resources.num_workers} ({'GPU' if spec.resources.use_gpu else 'CPU'})")
    print(f"output       {output_dir(spec, model_uri)}")


def main(argv: list[str] | None = None) -> int:
    spec, args = common.parse_cli("Zero-shot diagnosis of an exported ctvlp model, with metrics and a report.", argv)
    try:
        if args.dry_run:
            print_dry_run(spec)
            common.preflight_spec(spec, dry_run=True, evaluate=True)
            return 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    common.preflight_spec(spec, evaluate=True)
    common.init_ray()
    out = evaluate_model(spec)
    p = out["primary"]
    ci = p.summary.get("macro_auc_ci") or [None, None]
    print(summary_line(p))
    print(f"macro AUC {auc_with_ci(p.summary['macro']['auc'], ci[0], ci[1])} "
          f"({p.summary['protocol']}; {p.summary['num_included']} diseases)")
    print(f"report: {out['report']}")
    print(f"outputs: {out['out_dir']} (scores.csv, labels.csv, zero_shot/, figures/)")
    if out["card"]:
        print(f"model card and thresholds written into the export: {out['card']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
