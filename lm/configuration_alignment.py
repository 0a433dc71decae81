"""Settings of the VATT-style contrastive alignment head (:class:`lm.modeling_alignment.AlignmentHead`).

VATT (Akbari et al., arXiv 2104.11178) embeds video and audio into a video-audio space (512-d in the paper) and
projects the video embedding further into a video-text space (256-d), where the text lands too; DropToken drops a
random fraction (VATT: 50%) of the video/audio tokens before the backbone. :class:`AlignmentConfig` holds those
knobs; ``MMLMConfig.alignment`` records it as a plain dict. No torch here, so the LM's configuration imports it
without building anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

__all__ = ["AlignmentConfig", "BOUNDARY_TOKENS", "MODALITIES", "POOLINGS"]

MODALITIES = ("video", "audio", "text")
POOLINGS = ("mean", "attention")
BOUNDARY_TOKENS = {"video": ("<bov>", "<eov>"), "audio": ("<boa>", "<eoa>"), "text": ("<bot>", "<eot>")}


@dataclass
class AlignmentConfig:
    """Settings of the alignment head (recorded in ``MMLMConfig.alignment`` as a plain dict, see :meth:`to_dict`).

    Attributes:
        pooling: ``"mean"`` over the segment's hidden states, or ``"attention"`` (a learned per-modality score,
            softmax over the segment, weighted sum).
        va_dim: width of the video-audio space (VATT: 512).
        vt_dim: width of the video-text space (VATT: 256).
        droptoken: fraction of video/audio tokens dropped before the backbone in training (VATT: 0.5); 0 disables.
        temperature: initial softmax temperature tau of the NCE losses (logits are ``cos / tau``).
        learn_temperature: learn ``log(1 / tau)`` (CLIP-style), clamped so ``1 / tau <= max_logit_scale``.
        max_logit_scale: upper bound of ``1 / tau``.
        va_weight, vt_weight: weights of the video-audio NCE and the video-text MIL-NCE in the total loss.
        bidirectional: let every token of a modality sequence attend to the whole sequence (prefix-LM attention
            over it, as VATT's bidirectional encoders); ``False`` keeps the backbone causal.
        segment_tokens: ``{modality: [open_id, close_id]}`` boundary ids wrapped around each modality sequence
            (:meth:`from_vocabulary` fills them); ``None`` wraps nothing.
    """

    pooling: str = "mean"
    va_dim: int = 512
    vt_dim: int = 256
    droptoken: float = 0.5
    temperature: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    va_weight: float = 1.0
    vt_weight: float = 1.0
    bidirectional: bool = True
    segment_tokens: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"alignment pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.va_dim < 1 or self.vt_dim < 1:
            raise ValueError(f"va_dim and vt_dim must be >= 1, got {self.va_dim}, {self.vt_dim}")
        if not 0.0 <= self.droptoken < 1.0:
            raise ValueError(f"droptoken is the fraction of tokens dropped, in [0, 1), got {self.droptoken}")
        if not 0.0 < self.temperature:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1.0 / self.temperature <= self.max_logit_scale:
            raise ValueError(f"1 / temperature ({1 / self.temperature:.3g}) exceeds max_logit_scale "
                             f"({self.max_logit_scale})")
        if self.va_weight < 0 or self.vt_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got va_weight={self.va_weight}, vt_weight={self.vt_weight}")
        if self.segment_tokens is not None:
            tokens = {}
            for name, pair in self.segment_tokens.items():
                if name not in MODALITIES or len(pair) != 2:
                    raise ValueError(f"segment_tokens maps a modality of {MODALITIES} to [open_id, close_id], got "
                                     f"{name!r}: {pair!r}")
                tokens[name] = [int(pair[0]), int(pair[1])]
            self.segment_tokens = tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``MMLMConfig.alignment`` stores)."""
        return asdict(self)

    @classmethod
    def from_value(cls, value: "AlignmentConfig | Mapping[str, Any] | None") -> "AlignmentConfig":
        """An :class:`AlignmentConfig` from itself, a dict of its fields (unknown keys are an error), or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"alignment settings must be an AlignmentConfig or a dict, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown alignment setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(value))

    @classmethod
    def from_vocabulary(cls, vocab: Any, **kwargs: Any) -> "AlignmentConfig":
        """Settings whose ``segment_tokens`` are a vocabulary's boundary ids (``vocab.token_id("<bov>")`` ...).

        ``vocab`` is duck-typed (an ``mmtok.vocab.UnifiedVocabulary``): this module never imports :mod:`mmtok`.
        """
        tokens = {m: [int(vocab.token_id(o)), int(vocab.token_id(c))] for m, (o, c) in BOUNDARY_TOKENS.items()}
        return cls(segment_tokens=tokens, **kwargs)

