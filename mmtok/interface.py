"""The one modality-tokenizer interface every mmtok tokenizer implements.

The unified vocabulary, the task-sequence builders and the LM only ever see this surface, in the spirit of
audiocraft's ``CompressionModel``: a tokenizer turns media into integer codes and back, and says how many codes it
has, how many parallel codebooks it emits per step and how many latent steps it makes per second.

=============  ======================================  ==========================================
tokenizer      ``encode`` returns                      ``num_codebooks``
=============  ======================================  ==========================================
video          LongTensor ``[B, T', H', W']``          1 (one LFQ/FSQ code per latent position)
audio          LongTensor ``[B, n_q, frames]``         n_q residual-VQ levels
text           ``list[int]``                           1
=============  ======================================  ==========================================

The interface is a :class:`typing.Protocol`, so an implementation does not inherit from it (the video and audio
tokenizers are ``transformers.PreTrainedModel`` subclasses); ``isinstance(tok, ModalityTokenizer)`` checks the
surface at run time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

MODALITIES = ("text", "image", "video", "audio")


@runtime_checkable
class ModalityTokenizer(Protocol):
    """What the vocabulary and the LM need from a modality tokenizer.

    Attributes:
        modality: ``"text"``, ``"video"`` or ``"audio"`` (images go through the video tokenizer as 1-frame videos).
        codebook_size: number of distinct codes per codebook (ids are ``0 .. codebook_size - 1``).
        num_codebooks: parallel codebooks per latent step (residual-VQ levels for audio, 1 otherwise).
        frame_rate: latent steps per second of media (``None`` for text, which has no clock).
    """

    modality: str

    @property
    def codebook_size(self) -> int: ...

    @property
    def num_codebooks(self) -> int: ...

    @property
    def frame_rate(self) -> float | None: ...

    def encode(self, x: Any, /) -> Any:
        """Media -> integer codes."""

    def decode(self, codes: Any, /) -> Any:
        """Integer codes -> media."""


@dataclass(frozen=True)
class CodeSpec:
    """The part of a tokenizer the vocabulary depends on: enough to lay out an id range.

    Tests and the vocabulary use this directly, so a layout can be built before any tokenizer is trained.
    """

    modality: str
    codebook_size: int
    num_codebooks: int = 1
    # A hash of what maps input to codes where the sizes do not pin it down: a SentencePiece model retrained at the
    # same size gives the same prompt other ids, so the text tokenizer's digest enters the vocabulary fingerprint.
    content_digest: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.codebook_size < 1 or self.num_codebooks < 1:
            raise ValueError(f"codebook_size and num_codebooks must be >= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["content_digest"] is None:
            del d["content_digest"]
        return d


def code_spec(tokenizer: ModalityTokenizer) -> CodeSpec:
    """The :class:`CodeSpec` of a tokenizer; raises ``TypeError`` naming what is missing."""
    missing = [name for name in ("modality", "codebook_size", "num_codebooks", "encode", "decode")
               if not hasattr(tokenizer, name)]
    if missing:
        raise TypeError(f"{type(tokenizer).__name__} does not implement the modality-tokenizer interface: "
                        f"missing {', '.join(missing)}")
    return CodeSpec(tokenizer.modality, int(tokenizer.codebook_size), int(tokenizer.num_codebooks),
                    getattr(tokenizer, "content_digest", None))


def check_codes(codes: Any, layout: Sequence[str], codebook_size: int, max_levels: int | None = None) -> None:
    """Raise unless ``codes`` is what a tokenizer's ``decode`` takes: an integer tensor with one dimension per name in
    ``layout`` (e.g. ``("B", "n_q", "F")``) and ids in ``[0, codebook_size)``; with ``max_levels``, dimension 1 (the
    codebooks) must count 1 to ``max_levels``. ``TypeError`` for a non-integer tensor, ``ValueError`` otherwise;
    the messages name the expected layout."""
    shape = f"[{', '.join(layout)}]"
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor {shape}, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.dim() != len(layout) or (max_levels is not None and not 1 <= codes.shape[1] <= max_levels):
        levels = f" with 1 <= {layout[1]} <= {max_levels}" if max_levels is not None else ""
        raise ValueError(f"codes must be {shape}{levels}, got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]")


def require_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming the batch items of ``x`` (batch-first) that hold NaN or infinite values: a
    tokenizer must refuse such input rather than emit codes for it."""
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):   # one cheap pass: a finite sum has no NaN or inf in it
        return
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.dim() else ~torch.isfinite(x).reshape(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"{what} holds NaN or infinite values in batch item(s) {rows[:10]}"
                         + (f" and {len(rows) - 10} more" if len(rows) > 10 else ""))
