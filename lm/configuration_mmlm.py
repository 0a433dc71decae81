"""Configuration of the mmtok token LM (``model_type = "mmlm"``).

The LM reads one unified vocabulary (special tokens, text ids, video codes, audio codes; see ``mmtok.vocab``). The
config records that vocabulary's layout (its fingerprint and the global id range of every modality) as plain JSON
values, so a checkpoint states by itself which tokenizer bundle it speaks (only the error type,
:class:`mmtok.vocab.VocabularyMismatchError`, comes from :mod:`mmtok`).

Presets (:meth:`MMLMConfig.from_preset`):

==============  ======  ======  =====  ========  ============  ==============================================
preset          hidden  layers  heads  kv heads  intermediate  use
==============  ======  ======  =====  ========  ============  ==============================================
``debug``           64       2      4         2           128  unit tests (seconds on CPU)
``demo``           128       4      4         2           344  the embedded Moving-Digits corpus on 2 CPU cores
``base``           768      12     12         4          2048  a first GPU run (~85M non-embedding parameters)
``videopoet_1b``  2048      20     16         4          5632  VideoPoet-like ~1B (0.9B non-embedding), untested
==============  ======  ======  =====  ========  ============  ==============================================
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from lm.configuration_alignment import AlignmentConfig
from mmtok.vocab import VocabularyMismatchError  # one error type for every layout mismatch

# Modalities whose id range the config records when a vocabulary provides it (in this order; images share the
# video range in the unified vocabulary, so they have none of their own). "video_run": the run tokens <run_1> ..
# <run_n> of run-length video conditions (mmtok.run_length), only in vocabularies built with them.
LAYOUT_MODALITIES = ("special", "text", "video", "audio", "video_run")

PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=512),
    # 0.11 s per step of 8 demo sequences on 2 cores against 0.18 s at hidden 192 and 0.26 s at 256: on the demo's
    # fixed minutes the extra steps teach more than the width; the direction words steer the first move at 4,600
    # steps, not at 2,800 (docs/what_was_tried.md, fifth and sixth rounds)
    "demo": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=344, max_position_embeddings=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048, max_position_embeddings=4096),
    # VideoPoet's LM is a ~1B..8B prefix LM over ~1,280 video + audio + text tokens per example (arXiv 2312.14125).
    "videopoet_1b": dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
                         intermediate_size=5632, max_position_embeddings=4096),
}


def _range_pair(r: Any) -> list[int]:
    """``range`` / ``(start, end)`` / ``[start, end]`` -> ``[start, end]`` (end exclusive)."""
    if isinstance(r, range):
        if r.step != 1:
            raise ValueError(f"a modality id range must be contiguous, got {r}")
        return [int(r.start), int(r.stop)]
    start, end = r
    return [int(start), int(end)]


def _find_vocabulary(obj: Any) -> Any:
    """The vocabulary itself, or the one a tokenizer bundle (``mmtok.MultimodalTokenizer``) holds as ``.vocab``."""
    if hasattr(obj, "fingerprint"):
        return obj
    inner = getattr(obj, "vocab", None)
    if inner is not None and hasattr(inner, "fingerprint"):
        return inner
    raise TypeError(f"{type(obj).__name__} is neither a vocabulary (with .fingerprint, .size, .range_of) nor a "
                    f"tokenizer bundle holding one as .vocab")


def vocabulary_layout(vocab_or_bundle: Any) -> dict[str, Any]:
    """Read the layout fields the config records from a ``UnifiedVocabulary`` (duck-typed) or a bundle holding one.

    Returns ``{"vocab_size", "vocab_fingerprint", "modality_ranges"}``, where ``modality_ranges`` maps each modality
    the vocabulary knows (of :data:`LAYOUT_MODALITIES`) to its global ``[start, end)`` ids.
    """
    vocab = _find_vocabulary(vocab_or_bundle)
    ranges: dict[str, list[int]] = {}
    for modality in LAYOUT_MODALITIES:
        try:
            r = vocab.range_of(modality)
        except (KeyError, ValueError, LookupError):  # the vocabulary has no such modality
            continue
        pair = _range_pair(r) if r is not None else [0, 0]
        if pair[1] > pair[0]:
            ranges[modality] = pair
    return {"vocab_size": int(vocab.size), "vocab_fingerprint": str(vocab.fingerprint), "modality_ranges": ranges}


@strict
class MMLMConfig(PretrainedConfig):
    r"""Configuration of :class:`~lm.modeling_mmlm.MMLMForCausalLM`, a Llama-style decoder over a unified vocabulary.

    Args:
        vocab_size (`int`, defaults to 1024):
            Size of the unified vocabulary (all modalities plus special tokens); rows of the embedding and the head.
        hidden_size (`int`, defaults to 256): width of the residual stream.
        intermediate_size (`int`, defaults to 688): inner width of the SwiGLU MLP.
        num_hidden_layers (`int`, defaults to 4): number of decoder blocks.
        num_attention_heads (`int`, defaults to 8): query heads per attention layer.
        num_key_value_heads (`int`, *optional*): key/value heads (grouped-query attention, arXiv 2305.13245);
            defaults to ``num_attention_heads`` (multi-head attention). Must divide ``num_attention_heads``.
        head_dim (`int`, *optional*): per-head width; defaults to ``hidden_size // num_attention_heads``.
        hidden_act (`str`, defaults to ``"silu"``): MLP gate activation (SwiGLU with silu).
        max_position_embeddings (`int`, defaults to 2048): longest sequence the model is meant for (RoPE has no
            learned table, this bounds the validated input length).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.
        rms_norm_eps (`float`, defaults to 1e-6): epsilon of the RMSNorms.
        use_cache (`bool`, defaults to True): return a KV cache from forward (used by ``generate``).
        pad_token_id (`int`, *optional*, defaults to 0): padding id (the unified vocabulary puts ``<pad>`` at 0).
        bos_token_id (`int`, *optional*): ``<bos>`` id, used by ``generate`` when no prompt is given.
        eos_token_id (`int` or `list[int]`, *optional*): ``<eos>`` id(s) that stop ``generate``.
        tie_word_embeddings (`bool`, defaults to False): share the input embedding with the output head.
        rope_parameters (`dict`, *optional*): RoPE settings (``rope_type``, ``rope_theta``, ...) as in transformers;
            defaults to ``{"rope_type": "default", "rope_theta": 10000.0}``.
        attention_bias (`bool`, defaults to False): biases on q/k/v/o projections.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities in training.
        mlp_bias (`bool`, defaults to False): biases on the MLP projections.
        prefix_lm (`bool`, defaults to True): honour ``prefix_len`` in forward: attention is bidirectional over the
            first ``prefix_len`` tokens (the conditioning) and causal after them, as VideoPoet (arXiv 2312.14125).
            With ``False`` the model is purely causal and ``prefix_len`` is ignored.
        vocab_fingerprint (`str`, *optional*): fingerprint of the unified-vocabulary layout the model was trained
            on; :meth:`check_vocabulary` compares it with a tokenizer bundle's.
        modality_ranges (`dict[str, list[int]]`, *optional*): global ``[start, end)`` id range per modality
            (``"text"``, ``"video"``, ``"audio"``, ...); forward reports the NLL of target tokens in each range.
            ``"video_run"`` (a vocabulary with run tokens) holds ``<run_1> .. <run_n>``, id ``start + k - 1``
            standing for ``k`` repeated video cells (:mod:`mmtok.run_length`); ``video_grid`` counts them.
        video_code_levels (`list[int]`, *optional*): the levels of an FSQ video codebook (e.g. ``[8, 8, 8, 8]``);
            needs ``modality_ranges["video"]`` with ``prod(levels)`` ids. When set, each video code's input embedding
            and output-head row get a shared term added to their own: the sum of one learned vector per (level,
            value) the code is made of (FSQ's index order, :mod:`mmtok.quantizers.fsq`). Codes that decode alike
            share most of their level values, so what the LM learns about one reaches its neighbours: with a
            4,096-code book the LM otherwise learns every code separately, from the few clips that use it.
            ``None``: plain rows.
        video_grid (`list[int]`, *optional*): the video tokenizer's latent grid ``[frames, height, width]`` (e.g.
            ``[5, 4, 4]`` for the demo's 9x32x32 clips); needs ``modality_ranges["video"]`` and ``bos_token_id``.
            When set, each video token's input embedding gets a learned vector for its cell ``(h, w)`` and one for
            its latent frame (frames past ``frames - 1`` share the last), from its place among the video tokens
            since the sequence's ``<bos>`` (:func:`lm.modeling_mmlm.video_positions`; codes are laid out ``(t, h,
            w)``; a run token of ``modality_ranges["video_run"]`` takes the place of its first cell and counts all
            of its cells, so every code keeps the (frame, cell) it has in the plain form). RoPE alone only gives a
            token its place in the flat sequence, from which the model must work out which cell it draws and which
            token drew that cell one frame earlier; on the demo corpus a model without it put the glyph in a new
            random cell in every frame (docs/what_was_tried.md). ``None``: no such term.
        alignment (`dict`, *optional*): settings of the VATT-style contrastive alignment head
            (:class:`lm.configuration_alignment.AlignmentConfig` fields: ``pooling``, ``va_dim``, ``vt_dim``,
            ``droptoken``, ``temperature``, ...); ``None`` builds no head. Stored with every field filled in.
    """

    model_type = "mmlm"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    mlp_bias: bool = False
    prefix_lm: bool = True
    vocab_fingerprint: str | None = None
    modality_ranges: dict[str, list[int]] | None = None
    video_code_levels: list[int] | None = None
    video_grid: list[int] | None = None
    alignment: dict | None = None

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None and "rope_theta" not in kwargs and "rope_scaling" not in kwargs:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        if self.modality_ranges is not None:
            self.modality_ranges = {str(k): _range_pair(v) for k, v in self.modality_ranges.items()}
        if self.alignment is not None:  # validated (clear errors) and stored with every field filled in
            self.alignment = AlignmentConfig.from_value(self.alignment).to_dict()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked at construction: shapes that would only fail deep inside a forward."""
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.num_key_value_heads is not None and self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        for name, (start, end) in (self.modality_ranges or {}).items():
            if not 0 <= start <= end <= self.vocab_size:
                raise ValueError(f"modality range {name}=[{start}, {end}) is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        if self.video_code_levels is not None:
            levels = [int(v) for v in self.video_code_levels]
            video = (self.modality_ranges or {}).get("video")
            if not levels or min(levels) < 2:
                raise ValueError(f"video_code_levels must be a list of ints >= 2, got {self.video_code_levels}")
            if video is None or video[1] - video[0] != math.prod(levels):
                size = None if video is None else video[1] - video[0]
                raise ValueError(f"video_code_levels {levels} make {math.prod(levels)} codes, but the vocabulary's "
                                 f"video range holds {size}: use the levels of the bundle's video tokenizer")
        if self.video_grid is not None:
            grid = list(self.video_grid)
            if len(grid) != 3 or any(int(v) < 1 for v in grid) or any(int(v) != v for v in grid):
                raise ValueError(f"video_grid must be [frames, height, width] of ints >= 1, got {self.video_grid}")
            if (self.modality_ranges or {}).get("video") is None or self.bos_token_id is None:
                raise ValueError("video_grid needs modality_ranges['video'] and bos_token_id (build the config from "
                                 "the tokenizer bundle's vocabulary)")

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, vocab: Any = None, **overrides: Any) -> "MMLMConfig":
        """A named size (``debug``, ``demo``, ``base``, ``videopoet_1b``), optionally laid out for a vocabulary.

        Args:
            name: one of :data:`PRESETS`.
            vocab: a ``UnifiedVocabulary`` or a tokenizer bundle holding one; fills ``vocab_size``,
                ``vocab_fingerprint``, ``modality_ranges`` and the special ids it exposes.
            overrides: any other config field, applied last.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown MMLM preset {name!r}; expected one of {sorted(PRESETS)}")
        kwargs: dict[str, Any] = dict(PRESETS[name])
        if vocab is not None:
            kwargs.update(vocabulary_layout(vocab))
            kwargs.update(_special_ids(vocab))
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_vocabulary(cls, vocab: Any, **kwargs: Any) -> "MMLMConfig":
        """A config whose vocabulary fields come from ``vocab`` (a ``UnifiedVocabulary`` or a bundle)."""
        return cls(**{**vocabulary_layout(vocab), **_special_ids(vocab), **kwargs})

    # ------------------------------------------------------------------------------------------ layout check
    def layout_description(self) -> str:
        """One line naming this config's vocabulary layout (fingerprint, size, ranges)."""
        return _describe(self.vocab_fingerprint, self.vocab_size, self.modality_ranges or {})

    def check_vocabulary(self, vocab_or_bundle: Any) -> None:
        """Raise :class:`VocabularyMismatchError` naming both layouts when ``vocab_or_bundle`` differs from this config.

        The fingerprint decides; a config that records none (trained without a vocabulary) is checked on
        ``vocab_size`` alone. A vocabulary with its own ``check_fingerprint`` (``mmtok.vocab.UnifiedVocabulary``)
        raises its own ``VocabularyMismatchError`` (also a ``ValueError``), with both layouts in the message.
        """
        vocab = _find_vocabulary(vocab_or_bundle)
        if self.vocab_fingerprint is not None and callable(getattr(vocab, "check_fingerprint", None)):
            vocab.check_fingerprint(self.vocab_fingerprint, layout=self.layout_description(), what="model")
        other = vocabulary_layout(vocab)
        mismatch = other["vocab_size"] != self.vocab_size
        if self.vocab_fingerprint is not None:
            mismatch = mismatch or other["vocab_fingerprint"] != self.vocab_fingerprint
        if mismatch:
            raise VocabularyMismatchError(
                "the model and the tokenizer bundle use different vocabulary layouts:\n"
                f"  model:     {self.layout_description()}\n"
                f"  tokenizer: {_describe(other['vocab_fingerprint'], other['vocab_size'], other['modality_ranges'])}\n"
                "re-tokenize the data with the model's bundle, or train the model on this bundle")


def _describe(fingerprint: str | None, size: int, ranges: dict[str, list[int]]) -> str:
    spans = ", ".join(f"{k}=[{a},{b})" for k, (a, b) in ranges.items()) or "no ranges recorded"
    return f"fingerprint {fingerprint or '(none)'}, {size} ids, {spans}"


def _special_ids(vocab_or_bundle: Any) -> dict[str, int]:
    """The pad/bos/eos ids of a vocabulary (``UnifiedVocabulary.pad_id`` / ``bos_id`` / ``eos_id``), those it has."""
    vocab = _find_vocabulary(vocab_or_bundle)
    out: dict[str, int] = {}
    for key in ("pad", "bos", "eos"):
        value = getattr(vocab, f"{key}_id", None)
        if value is not None:
            out[f"{key}_token_id"] = int(value)
    return out


__all__ = ["MMLMConfig", "PRESETS", "VocabularyMismatchError", "vocabulary_layout", "LAYOUT_MODALITIES"]
