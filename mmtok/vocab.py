"""The unified vocabulary: one id space for special tokens, text, video and audio codes.

VideoPoet (arXiv 2312.14125) feeds a decoder-only LM one stream of ids drawn from a single vocabulary: special and
task tokens, text, MAGVIT-v2 video codes and SoundStream audio codes, with a separate range per residual-VQ level.
:class:`UnifiedVocabulary` lays that id space out and maps between each tokenizer's *local* codes and the LM's
*global* ids.

Layout (ids grow downwards; every range is contiguous and the ranges are disjoint)::

    [0, num_special_slots)             special tokens: <pad> <bos> <eos>, boundaries <bot>/<eot> <boi>/<eoi>
                                       <bov>/<eov> <boa>/<eoa>, task tokens <t2v> <t2i> <i2v> <v2a> <a2v> <vcont>
                                       <avcont> <v2t>, any ``extra_special_tokens``, then <reserved_k> slots, so
                                       that a new special token takes a reserved slot and never shifts a range
    text                               text.codebook_size ids (the SentencePiece ids, offset)
    video                              video.codebook_size ids (images are 1-frame videos: same range)
    audio level 0, level 1, ...        audio.codebook_size ids per residual-VQ level, ``num_audio_levels`` levels
    video_run (optional)               ``max_video_run`` run tokens <run_1> .. <run_n> of the run-length form of
                                       video codes (:mod:`mmtok.run_length`); only with ``max_video_run > 0``

A modality whose spec is ``None`` takes no ids. The run tokens come last, so a vocabulary with them is the same
layout with ids appended: every other id keeps its meaning, and one without them (the default) has exactly the
layout and fingerprint it had before run tokens existed. The layout is summarised by
:meth:`UnifiedVocabulary.describe` and hashed into :attr:`UnifiedVocabulary.fingerprint` (ranges and special-token names), which the LM config records; a
pairing of a model or tokenizers with another layout raises :class:`VocabularyMismatchError` naming both layouts.

API in one glance::

    vocab = UnifiedVocabulary(text=CodeSpec("text", 1000), video=CodeSpec("video", 2**10),
                              audio=CodeSpec("audio", 1024, 8), num_audio_levels=4)
    vocab.size, vocab.fingerprint, vocab.pad_id, vocab.token_id("<bos>")
    g = vocab.to_global("video", codes)           # LongTensor/list/int of local codes -> global ids
    a = vocab.to_global("audio", audio_codes)     # [..., L, frames]: row l gets level l's offset
    vocab.to_local("video", g)                    # exact inverse (validates the range)
    vocab.range_of("audio", level=2)              # python ``range`` of global ids
    vocab.modality_of(i)                          # "special" | "text" | "video" | "audio" | "video_run"
    runs = vocab.with_video_runs(16)              # + <run_1> .. <run_16>; runs.run_token_id(3), runs.run_length_of(i)
    vocab.to_json(path) / UnifiedVocabulary.from_json(path_or_json_string)
    vocab.check_tokenizers(text=..., video=..., audio=...); vocab.check_fingerprint(fp, layout=..., what="model")
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmtok.interface import CodeSpec, code_spec
from mmtok.io import atomic_write

__all__ = [
    "BASE_SPECIAL_TOKENS",
    "BOUNDARY_TOKENS",
    "TASK_TOKENS",
    "UnifiedVocabulary",
    "VocabularyMismatchError",
]

FORMAT_VERSION = 1

# Append-only: a token added here takes the next slot, so existing ids never move.
BOUNDARY_TOKENS: dict[str, tuple[str, str]] = {
    "text": ("<bot>", "<eot>"),
    "image": ("<boi>", "<eoi>"),
    "video": ("<bov>", "<eov>"),
    "audio": ("<boa>", "<eoa>"),
}
TASK_TOKENS: tuple[str, ...] = ("<t2v>", "<t2i>", "<i2v>", "<v2a>", "<a2v>", "<vcont>", "<avcont>", "<v2t>")
BASE_SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>",
    *(tok for pair in BOUNDARY_TOKENS.values() for tok in pair),
    *TASK_TOKENS,
)
DEFAULT_SPECIAL_SLOTS = 64
_MODALITY_KWARGS = ("text", "video", "audio")


class VocabularyMismatchError(ValueError):
    """A vocabulary, a tokenizer set or a model disagree about the id layout."""


IdsLike = Any  # int | Sequence[int] | nested lists | torch.Tensor


class UnifiedVocabulary:
    """One id space over special tokens, text, video and audio codes (layout in the module docstring).

    Args:
        text: the text tokenizer's :class:`CodeSpec` (or the tokenizer itself); ``None`` for no text range.
        video: the video tokenizer's spec or tokenizer; images share this range. ``None`` for no video range.
        audio: the audio tokenizer's spec or tokenizer; ``num_codebooks`` is its number of residual-VQ levels.
        num_audio_levels: how many RVQ levels get an id range (default: all of the codec's). VideoPoet keeps the
            first 4 of SoundStream's levels; the LM then never sees the finer levels.
        extra_special_tokens: additional special tokens (e.g. ``"<sep>"``), placed after the built-in ones.
        num_special_slots: size of the special range, reserved slots included; the text range starts here.
        max_video_run: number of run tokens ``<run_1> .. <run_n>`` (the longest run of repeated video cells one
            token folds; :mod:`mmtok.run_length`), in a ``video_run`` range after every other one. 0 (default): none.
    """

    def __init__(self, *, text: CodeSpec | Any | None = None, video: CodeSpec | Any | None = None,
                 audio: CodeSpec | Any | None = None, num_audio_levels: int | None = None,
                 extra_special_tokens: Sequence[str] = (), num_special_slots: int = DEFAULT_SPECIAL_SLOTS,
                 max_video_run: int = 0) -> None:
        specs = {}
        for name, value in (("text", text), ("video", video), ("audio", audio)):
            if value is None:
                continue
            spec = _as_spec(value)
            expected = ("video", "image") if name == "video" else (name,)
            if spec.modality not in expected:
                raise ValueError(f"{name}= got a spec for modality {spec.modality!r}: {spec}")
            if name != "audio" and spec.num_codebooks != 1:
                raise ValueError(f"{name} must have one codebook (got num_codebooks={spec.num_codebooks}); only "
                                 "audio has several residual-VQ levels")
            specs[name] = spec
        self._specs: dict[str, CodeSpec] = specs

        if "audio" in specs:
            levels = specs["audio"].num_codebooks if num_audio_levels is None else int(num_audio_levels)
            if not 1 <= levels <= specs["audio"].num_codebooks:
                raise ValueError(f"num_audio_levels must be in [1, {specs['audio'].num_codebooks}] (the codec's "
                                 f"levels), got {num_audio_levels}")
        elif num_audio_levels is not None:
            raise ValueError("num_audio_levels given but the vocabulary has no audio")
        else:
            levels = 0
        self._num_audio_levels = levels

        names = list(BASE_SPECIAL_TOKENS)
        for tok in extra_special_tokens:
            if not (isinstance(tok, str) and tok.startswith("<") and tok.endswith(">")):
                raise ValueError(f"special tokens look like '<name>', got {tok!r}")
            if tok in names or tok.startswith("<reserved_"):
                raise ValueError(f"special token {tok!r} is already defined or reserved")
            names.append(tok)
        if num_special_slots < len(names):
            raise ValueError(f"num_special_slots={num_special_slots} cannot hold the {len(names)} special tokens")
        self._named_specials: tuple[str, ...] = tuple(names)
        self._extra_special_tokens: tuple[str, ...] = tuple(extra_special_tokens)
        self._num_special_slots = int(num_special_slots)
        self._special_to_id = {tok: i for i, tok in enumerate(names)}

        # ---- ranges, in layout order
        start = self._num_special_slots
        self._ranges: dict[str, range] = {"special": range(0, start)}
        if "text" in specs:
            self._ranges["text"] = range(start, start + specs["text"].codebook_size)
            start = self._ranges["text"].stop
        if "video" in specs:
            self._ranges["video"] = range(start, start + specs["video"].codebook_size)
            start = self._ranges["video"].stop
        self._audio_levels: list[range] = []
        if "audio" in specs:
            cb = specs["audio"].codebook_size
            self._audio_levels = [range(start + lvl * cb, start + (lvl + 1) * cb) for lvl in range(levels)]
            self._ranges["audio"] = range(start, start + levels * cb)
            start = self._ranges["audio"].stop
        if isinstance(max_video_run, bool) or int(max_video_run) != max_video_run or max_video_run < 0:
            raise ValueError(f"max_video_run must be an int >= 0, got {max_video_run!r}")
        self._max_video_run = int(max_video_run)
        if self._max_video_run:
            if "video" not in specs:
                raise ValueError("max_video_run > 0 needs a video range: run tokens stand for repeated video codes")
            # Last, after audio: appending keeps every other id where a vocabulary without runs has it.
            self._ranges["video_run"] = range(start, start + self._max_video_run)
            start = self._ranges["video_run"].stop
        self._size = start
        self._fingerprint = hashlib.sha256(
            json.dumps(self._layout(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_tokenizers(cls, *, text: Any = None, video: Any = None, audio: Any = None,
                        **kwargs: Any) -> "UnifiedVocabulary":
        """Lay out the vocabulary of a tokenizer set (anything implementing the modality-tokenizer interface)."""
        return cls(text=_as_spec(text), video=_as_spec(video), audio=_as_spec(audio), **kwargs)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        """Total number of ids (the LM's embedding rows)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def fingerprint(self) -> str:
        """16 hex digits hashing the layout (ranges and special-token names); equal layouts have equal prints."""
        return self._fingerprint

    @property
    def pad_id(self) -> int:
        return self._special_to_id["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._special_to_id["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._special_to_id["<eos>"]

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Names of the special tokens in use, in id order (reserved slots excluded)."""
        return self._named_specials

    @property
    def num_audio_levels(self) -> int:
        """RVQ levels with an id range (0 without audio)."""
        return self._num_audio_levels

    @property
    def max_video_run(self) -> int:
        """Number of run tokens ``<run_1> .. <run_n>`` (0: the vocabulary has none)."""
        return self._max_video_run

    def run_token_id(self, length: IdsLike) -> IdsLike:
        """Global id of ``<run_k>`` for ``k = length`` (an int, a list or a LongTensor of lengths in
        ``[1, max_video_run]``)."""
        r = self._run_range()
        t, restore = _to_tensor(length)
        _check_bounds(t, 1, r.stop - r.start + 1, "video run lengths")
        return restore(t - 1 + r.start)

    def run_length_of(self, token_id: IdsLike) -> IdsLike:
        """Cells a run token stands for (the inverse of :meth:`run_token_id`); other ids raise ``ValueError``."""
        r = self._run_range()
        t, restore = _to_tensor(token_id)
        _check_bounds(t, r.start, r.stop, "run token ids", describe=self._describe_id)
        return restore(t - r.start + 1)

    def with_video_runs(self, max_video_run: int) -> "UnifiedVocabulary":
        """This layout with ``max_video_run`` run tokens appended (``0``: without any); a new vocabulary."""
        return UnifiedVocabulary(**self._specs, num_audio_levels=self._num_audio_levels or None,
                                 extra_special_tokens=self._extra_special_tokens,
                                 num_special_slots=self._num_special_slots, max_video_run=max_video_run)

    def without_video_runs(self) -> "UnifiedVocabulary":
        """The layout without run tokens: the one token shards of local codes are recorded against."""
        return self if not self._max_video_run else self.with_video_runs(0)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities with an id range, in layout order (a subset of ``("text", "video", "audio")``)."""
        return tuple(m for m in _MODALITY_KWARGS if m in self._specs)

    def spec(self, modality: str) -> CodeSpec | None:
        """The :class:`CodeSpec` a modality was laid out with (``None`` if absent; ``"image"`` means video)."""
        return self._specs.get(self._canonical(modality, must_exist=False))

    def has(self, modality: str) -> bool:
        """Whether the vocabulary has ids for ``modality`` (``"text"``, ``"video"``/``"image"``, ``"audio"`` or
        ``"video_run"``)."""
        name = self._canonical(modality, must_exist=False)
        return name in self._specs or (name == "video_run" and name in self._ranges)

    def token_id(self, token: str) -> int:
        """Id of a special token such as ``"<bos>"`` (``"<reserved_k>"`` names the k-th free slot)."""
        if token in self._special_to_id:
            return self._special_to_id[token]
        if token.startswith("<reserved_") and token.endswith(">"):
            k = token[len("<reserved_"):-1]
            if k.isdigit() and len(self._named_specials) + int(k) < self._num_special_slots:
                return len(self._named_specials) + int(k)
        raise KeyError(f"unknown special token {token!r}; known: {', '.join(self._named_specials)}")

    def token_name(self, token_id: int) -> str:
        """Readable name of any id: ``"<bos>"``, ``"text:12"``, ``"video:513"``, ``"audio[2]:7"``."""
        token_id = int(token_id)
        modality = self.modality_of(token_id)
        if modality == "special":
            if token_id < len(self._named_specials):
                return self._named_specials[token_id]
            return f"<reserved_{token_id - len(self._named_specials)}>"
        if modality == "audio":
            level = self.audio_level_of(token_id)
            return f"audio[{level}]:{token_id - self._audio_levels[level].start}"
        if modality == "video_run":
            return f"<run_{token_id - self._ranges['video_run'].start + 1}>"
        return f"{modality}:{token_id - self._ranges[modality].start}"

    def is_special(self, token_id: int) -> bool:
        return 0 <= int(token_id) < self._num_special_slots

    # ---------------------------------------------------------------------------------------------- ranges
    def range_of(self, modality: str, level: int | None = None) -> range:
        """Global ids of a modality (``"special"``, ``"text"``, ``"video"``/``"image"``, ``"audio"``, and
        ``"video_run"``: the run tokens, ``<run_1>`` first).

        For audio, ``level=None`` gives all kept levels and ``level=l`` the range of RVQ level ``l``.
        """
        name = self._canonical(modality)
        if name == "audio" and level is not None:
            return self._audio_level(level)
        if level is not None:
            raise ValueError(f"level= only applies to audio, got level={level} for {modality!r}")
        return self._ranges[name]

    def ranges(self) -> dict[str, range]:
        """``{"special": ..., "text": ..., "video": ..., "audio": ...}`` for the ranges present, in id order."""
        return dict(self._ranges)

    def modality_of(self, token_id: int) -> str:
        """``"special"``, ``"text"``, ``"video"``, ``"audio"`` or ``"video_run"``; ``ValueError`` for an id outside
        the vocabulary."""
        token_id = int(token_id)
        for name, r in self._ranges.items():
            if token_id in r:
                return name
        raise ValueError(f"id {token_id} is outside the vocabulary [0, {self._size})")

    def audio_level_of(self, token_id: int) -> int:
        """The RVQ level of an audio id."""
        token_id = int(token_id)
        if "audio" not in self._ranges or token_id not in self._ranges["audio"]:
            raise ValueError(f"id {token_id} ({self._describe_id(token_id)}) is not an audio id")
        return (token_id - self._ranges["audio"].start) // self._specs["audio"].codebook_size

    # -------------------------------------------------------------------------------------------- mapping
    def to_global(self, modality: str, ids: IdsLike, level: int | None = None) -> IdsLike:
        """Local codes of a modality -> global ids; returns the input's type (int, list or LongTensor).

        Audio: ``level=l`` offsets every code into level ``l``'s range; ``level=None`` expects ``[..., L, frames]``
        (``L <= num_audio_levels``) and offsets row ``l`` into level ``l``. Codes outside ``[0, codebook_size)``
        raise ``ValueError`` naming the modality and the bad value.
        """
        name = self._canonical(modality)
        if name == "special":
            raise ValueError("special tokens have no local ids; use token_id()")
        if name == "video_run":
            raise ValueError("run tokens have no local ids; use run_token_id(length)")
        t, restore = _to_tensor(ids)
        cb = self._specs[name].codebook_size
        _check_bounds(t, 0, cb, f"local {modality} codes")
        if name != "audio":
            if level is not None:
                raise ValueError(f"level= only applies to audio, got level={level} for {modality!r}")
            return restore(t + self._ranges[name].start)
        if level is not None:
            return restore(t + self._audio_level(level).start)
        if t.dim() < 2:
            raise ValueError(f"audio codes with level=None must be [..., levels, frames], got shape {tuple(t.shape)}"
                             "; pass level= for a single level")
        n_levels = t.shape[-2]
        if n_levels > self._num_audio_levels:
            raise ValueError(f"audio codes have {n_levels} levels but the vocabulary keeps {self._num_audio_levels}"
                             "; slice them (codes[..., :L, :]) first")
        offsets = torch.arange(n_levels, dtype=torch.long).unsqueeze(-1) * cb + self._ranges["audio"].start
        return restore(t + offsets)  # [..., L, frames] + [L, 1]

    def to_local(self, modality: str, ids: IdsLike, level: int | None = None) -> IdsLike:
        """Global ids -> local codes (the exact inverse of :meth:`to_global`).

        Ids outside the modality's range (or outside level ``level``'s range for audio) raise ``ValueError``. For
        audio with ``level=None`` each id's own level offset is removed.
        """
        name = self._canonical(modality)
        if name == "special":
            raise ValueError("special tokens have no local ids")
        if name == "video_run":
            raise ValueError("run tokens have no local ids; use run_length_of(token_id)")
        t, restore = _to_tensor(ids)
        if name == "audio" and level is not None:
            r = self._audio_level(level)
            _check_bounds(t, r.start, r.stop, f"audio level-{level} ids", describe=self._describe_id)
            return restore(t - r.start)
        if level is not None:
            raise ValueError(f"level= only applies to audio, got level={level} for {modality!r}")
        r = self._ranges[name]
        _check_bounds(t, r.start, r.stop, f"{name} ids", describe=self._describe_id)
        if name == "audio":
            return restore((t - r.start) % self._specs["audio"].codebook_size)
        return restore(t - r.start)

    # -------------------------------------------------------------------------------------------- checks
    def describe(self) -> str:
        """One-line layout summary, e.g. ``special[0,64) text[64,1064) video[1064,2088) audio 4x1024[...) fp=...``."""
        parts = [f"special[0,{self._num_special_slots})"]
        for name in _MODALITY_KWARGS:
            if name in self._ranges:
                r = self._ranges[name]
                label = (f"audio {self._num_audio_levels}x{self._specs['audio'].codebook_size}"
                         if name == "audio" else f"{name}")
                parts.append(f"{label}[{r.start},{r.stop})")
        if "video_run" in self._ranges:
            r = self._ranges["video_run"]
            parts.append(f"video_run 1..{self._max_video_run}[{r.start},{r.stop})")
        return " ".join(parts) + f" size={self._size} fp={self._fingerprint}"

    def __repr__(self) -> str:
        return f"UnifiedVocabulary({self.describe()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnifiedVocabulary) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def check_tokenizers(self, *, text: Any = None, video: Any = None, audio: Any = None) -> None:
        """Raise :class:`VocabularyMismatchError` unless the given tokenizers (or specs) have this layout's specs.

        Every modality of the vocabulary must be given, and no other; codebook sizes must match and the audio codec
        must have at least ``num_audio_levels`` levels. The error names both layouts.
        """
        given = {"text": text, "video": video, "audio": audio}
        problems = []
        for name in _MODALITY_KWARGS:
            mine, tok = self._specs.get(name), given[name]
            theirs = _as_spec(tok)
            if mine is None and theirs is None:
                continue
            if mine is None:
                problems.append(f"{name}: tokenizer given ({theirs.codebook_size} codes) but no {name} range")
            elif theirs is None:
                problems.append(f"{name}: vocabulary has a {name} range but no {name} tokenizer was given")
            elif mine.codebook_size != theirs.codebook_size:
                problems.append(f"{name}: codebook_size {mine.codebook_size} in the vocabulary, "
                                f"{theirs.codebook_size} in the tokenizer")
            elif mine.content_digest != theirs.content_digest and mine.content_digest and theirs.content_digest:
                problems.append(f"{name}: the tokenizer is not the one the vocabulary was built with (model digest "
                                f"{mine.content_digest} in the vocabulary, {theirs.content_digest} in the tokenizer)")
            elif name == "audio" and theirs.num_codebooks < self._num_audio_levels:
                problems.append(f"audio: vocabulary keeps {self._num_audio_levels} RVQ levels, the codec has only "
                                f"{theirs.num_codebooks}")
            elif name == "audio" and mine.num_codebooks != theirs.num_codebooks:
                problems.append(f"audio: num_codebooks {mine.num_codebooks} in the vocabulary, "
                                f"{theirs.num_codebooks} in the tokenizer")
        if problems:
            try:
                other = UnifiedVocabulary.from_tokenizers(
                    text=text, video=video, audio=audio,
                    num_audio_levels=min(self._num_audio_levels, _as_spec(audio).num_codebooks)
                    if audio is not None and self._num_audio_levels else None,
                    extra_special_tokens=self._extra_special_tokens, num_special_slots=self._num_special_slots)
                theirs_desc = other.describe()
            except (ValueError, TypeError) as e:  # the tokenizer set may not even form a layout
                theirs_desc = f"<no valid layout: {e}>"
            raise VocabularyMismatchError(
                "vocabulary layout does not match the tokenizers (" + "; ".join(problems) + ")\n"
                f"  vocabulary: {self.describe()}\n  tokenizers: {theirs_desc}")

    def check_fingerprint(self, fingerprint: str, *, layout: str | None = None, what: str = "model") -> None:
        """Raise :class:`VocabularyMismatchError` if ``fingerprint`` (e.g. from an LM config) is not this layout's.

        ``layout`` is the other side's :meth:`describe` string when it recorded one; the error names both layouts.
        """
        if fingerprint == self._fingerprint:
            return
        theirs = layout if layout else f"fp={fingerprint}"
        raise VocabularyMismatchError(
            f"the {what} was built for another vocabulary layout (fingerprint {fingerprint} != {self._fingerprint})"
            f"\n  {what}: {theirs}\n  this vocabulary: {self.describe()}")

    # --------------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: the specs and options (which determine the layout), the ranges and fingerprint."""
        return {
            "format_version": FORMAT_VERSION,
            "specs": {name: spec.to_dict() for name, spec in self._specs.items()},
            "num_audio_levels": self._num_audio_levels or None,
            "extra_special_tokens": list(self._extra_special_tokens),
            "num_special_slots": self._num_special_slots,
            # only when present, so a vocabulary without run tokens serializes exactly as before they existed
            **({"max_video_run": self._max_video_run} if self._max_video_run else {}),
            "layout": self._layout(),
            "size": self._size,
            "fingerprint": self._fingerprint,
            "describe": self.describe(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnifiedVocabulary":
        """Rebuild from :meth:`to_dict`; a stored layout or fingerprint that the specs do not reproduce raises."""
        if not isinstance(data, dict) or "specs" not in data:
            raise ValueError("not a serialized UnifiedVocabulary (no 'specs' key)")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported vocabulary format_version {version!r} (this mmtok reads {FORMAT_VERSION})")
        try:
            specs = {name: CodeSpec(**spec) for name, spec in data["specs"].items()}
            vocab = cls(**specs, num_audio_levels=data.get("num_audio_levels"),
                        extra_special_tokens=tuple(data.get("extra_special_tokens", ())),
                        num_special_slots=int(data.get("num_special_slots", DEFAULT_SPECIAL_SLOTS)),
                        max_video_run=int(data.get("max_video_run", 0)))
        except TypeError as e:
            raise ValueError(f"malformed vocabulary description: {e}") from e
        stored_fp = data.get("fingerprint")
        if stored_fp is not None and (stored_fp != vocab.fingerprint
                                      or ("layout" in data and data["layout"] != vocab._layout())):
            raise VocabularyMismatchError(
                f"the stored vocabulary layout disagrees with the one its specs give (stored fingerprint {stored_fp},"
                f" rebuilt {vocab.fingerprint})\n  stored:  {data.get('describe', '?')}\n  rebuilt: {vocab.describe()}")
        return vocab

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text of :meth:`to_dict`; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "UnifiedVocabulary":
        """From a JSON string or a path to a JSON file written by :meth:`to_json`."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text = source
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"vocabulary file not found: {path}")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"vocabulary JSON is malformed: {e}") from e
        return cls.from_dict(data)

    # ------------------------------------------------------------------------------------------ internals
    def _layout(self) -> dict[str, Any]:
        layout: dict[str, Any] = {name: [r.start, r.stop] for name, r in self._ranges.items()}
        layout["special_tokens"] = list(self._named_specials)
        if self._audio_levels:
            layout["audio_levels"] = [[r.start, r.stop] for r in self._audio_levels]
        digests = {name: spec.content_digest for name, spec in self._specs.items() if spec.content_digest}
        if digests:
            layout["content_digests"] = digests
        return layout

    def _canonical(self, modality: str, must_exist: bool = True) -> str:
        name = "video" if modality == "image" else modality
        if name not in ("special", *_MODALITY_KWARGS, "video_run"):
            raise ValueError(f"unknown modality {modality!r}; expected special, text, image, video, audio or "
                             "video_run")
        if must_exist and name not in self._ranges:
            raise ValueError(f"this vocabulary has no {modality} range ({self.describe()})")
        return name

    def _audio_level(self, level: int) -> range:
        if "audio" not in self._ranges:
            raise ValueError(f"this vocabulary has no audio range ({self.describe()})")
        if not 0 <= int(level) < self._num_audio_levels:
            raise ValueError(f"audio level {level} out of range: the vocabulary keeps {self._num_audio_levels} levels")
        return self._audio_levels[int(level)]

    def _run_range(self) -> range:
        if "video_run" not in self._ranges:
            raise ValueError(f"this vocabulary has no run tokens ({self.describe()}); build it with max_video_run=n "
                             "(or vocab.with_video_runs(n))")
        return self._ranges["video_run"]

    def _describe_id(self, token_id: int) -> str:
        try:
            return self.token_name(token_id)
        except ValueError:
            return "outside the vocabulary"


def _as_spec(x: Any) -> CodeSpec | None:
    """A :class:`CodeSpec` from a spec, a tokenizer or ``None``."""
    return x if x is None or isinstance(x, CodeSpec) else code_spec(x)


def _to_tensor(ids: IdsLike):
    """(LongTensor of ``ids``, function that converts a result back to the input's kind: int, list, ndarray or
    tensor)."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
        return ids.long(), lambda t: t
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
        return torch.from_numpy(ids.astype(np.int64)), lambda t: t.numpy()
    if isinstance(ids, bool):
        raise TypeError("ids must be integers, got a bool")
    if isinstance(ids, int) or (hasattr(ids, "__index__") and not isinstance(ids, (list, tuple))):
        return torch.tensor(int(ids)), lambda t: int(t)
    if isinstance(ids, (list, tuple)):
        try:
            t = torch.tensor(ids, dtype=torch.long) if len(ids) else torch.zeros(0, dtype=torch.long)
        except (TypeError, ValueError) as e:
            raise TypeError(f"ids must be integers (or nested lists of them): {e}") from e
        return t, lambda r: r.tolist()
    raise TypeError(f"ids must be an int, a list of ints or an integer tensor, got {type(ids).__name__}")


def _check_bounds(t: torch.Tensor, lo: int, hi: int, what: str, describe=None) -> None:
    if t.numel() == 0:
        return
    bad = (t < lo) | (t >= hi)
    if bool(bad.any()):
        value = int(t[bad].flatten()[0])
        count = int(bad.sum())
        extra = f" ({describe(value)})" if describe is not None else ""
        raise ValueError(f"{count} {what} outside [{lo}, {hi}), e.g. {value}{extra}")
