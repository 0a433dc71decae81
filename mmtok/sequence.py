"""VideoPoet-style task sequences over the unified vocabulary: builders and their validating inverse.

Every example is one flat sequence ``<bos> <task> condition-segments output-segments <eos>``; a segment is a
boundary pair around a body of global ids (``<bot> text <eot>``, ``<boi> image <eoi>``, ``<bov> video <eov>``,
``<boa> audio <eoa>``). As in VideoPoet (arXiv 2312.14125) the LM is a prefix LM: the loss covers the output
only, and attention may be bidirectional over the prefix.

=========  ===================================================  ============================================
task       condition (prefix)                                   output (loss)
=========  ===================================================  ============================================
t2v        <bot> text <eot>                                     <bov> video <eov>
t2i        <bot> text <eot>                                     <boi> first latent frame <eoi>
i2v        [text] <boi> first latent frame <eoi>                <bov> latent frames 1.. <eov>
v2a        [text] <bov> video <eov>                             <boa> audio <eoa>
a2v        [text] <boa> audio <eoa>                             <bov> video <eov>
vcont      [text] <bov> first k latent frames <eov>             <bov> the rest <eov>
avcont     [text] <bov> video[:k] <eov> <boa> audio[:s] <eoa>   <bov> video[k:] <eov> <boa> audio[s:] <eoa>
v2t        <bov> video <eov>                                    <bot> text <eot>
=========  ===================================================  ============================================

``[text]`` is an optional ``<bot> text <eot>`` condition: by default (``text_condition=None``) it is added when
``text`` is given; ``text_condition=False`` ignores ``text`` (the plain layouts above), ``True`` requires it. Other
modalities a task does not use are ignored. Images are 1-frame videos of the causal video tokenizer, so the "first
latent frame" of the video codes *is* the image's code map (t2i and i2v take it from ``video``). The output's
opening boundary ends the prefix: ``prefix_len`` counts it, and ``loss_mask`` is True from there on (the output
bodies, their boundaries and ``<eos>``). HF convention: ``labels = input_ids.masked_fill(~loss_mask, -100)``; the
model shifts, so the prediction made *at* the last prefix position (the output's ``<bov>``) is the first one with a
loss.

Flattening: video ``[T', H', W']`` in (t, h, w) order; audio ``[L, frames]`` either ``"frame_major"`` (the levels of
frame 0, then of frame 1, ...; a delay-free interleave in which each frame's coarse level precedes its fine ones) or
``"level_major"`` (all of level 0, then level 1, ...). ``num_audio_levels`` keeps the first L levels (default: the
vocabulary's).

Run-length conditions: with ``video_runs=True`` (a vocabulary with run tokens, ``UnifiedVocabulary(max_video_run=n)``)
every video *condition* segment (v2a's, v2t's, vcont's and avcont's first frames) is written in the lossless
run-length form of :mod:`mmtok.run_length`: latent frame 0 as is, then each stretch of cells equal to the same cells
one frame earlier as one ``<run_k>`` token. Outputs stay plain codes (the LM generates plain codes, and
:func:`output_constraints` is unchanged); i2v's image condition is one frame, which has no runs. The parser reads
either form in any video segment and returns the codes.

Classifier-free guidance: ``cond_dropout=p`` replaces, with probability p, every condition body by an empty one
(``<bot><eot>``, ``<bov><eov>``, ...); a generator builds the unconditional prompt with :func:`build_prompt`
(``unconditional=True``).

API: :func:`build_example` -> :class:`TaskExample`; :func:`build_prompt` (the prefix, for generation);
:func:`output_constraints` (the allowed id range of each output position, for constrained decoding);
:func:`parse_sequence` -> :class:`ParsedSequence` (strict by default, ``repair=True`` pads/truncates and lists every
change in ``.repairs``); :data:`TASKS` describes each layout. Builders are pure and cheap (a few tensor ops).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmtok.run_length import RunLengthError, check_run_length, expand_runs, run_length_encode_video, \
    video_runs_to_global
from mmtok.vocab import BOUNDARY_TOKENS, TASK_TOKENS, UnifiedVocabulary

__all__ = [
    "AUDIO_PATTERNS",
    "ParsedSequence",
    "SequenceError",
    "TASKS",
    "TaskExample",
    "TaskLayout",
    "build_example",
    "build_prompt",
    "flatten_audio",
    "output_constraints",
    "parse_sequence",
    "unflatten_audio",
]

AUDIO_PATTERNS = ("frame_major", "level_major")


class SequenceError(ValueError):
    """A token sequence does not have the structure its task asks for."""


@dataclass(frozen=True)
class TaskLayout:
    """Segment kinds (``"text"``, ``"image"``, ``"video"``, ``"audio"``) of a task's condition and output."""

    name: str
    condition: tuple[str, ...]
    output: tuple[str, ...]
    optional_text: bool  # an extra leading <bot> text <eot> condition is allowed
    needs: tuple[str, ...]  # builder arguments that must be given
    description: str

    @property
    def token(self) -> str:
        return f"<{self.name}>"


TASKS: dict[str, TaskLayout] = {t.name: t for t in (
    TaskLayout("t2v", ("text",), ("video",), False, ("text", "video"), "text to video"),
    TaskLayout("t2i", ("text",), ("image",), False, ("text", "video"), "text to image (first latent frame)"),
    TaskLayout("i2v", ("image",), ("video",), True, ("video",), "image (first latent frame) to the rest of the video"),
    TaskLayout("v2a", ("video",), ("audio",), True, ("video", "audio"), "video to audio"),
    TaskLayout("a2v", ("audio",), ("video",), True, ("video", "audio"), "audio to video"),
    TaskLayout("vcont", ("video",), ("video",), True, ("video",), "video continuation from k latent frames"),
    TaskLayout("avcont", ("video", "audio"), ("video", "audio"), True, ("video", "audio"),
               "audio-video continuation"),
    TaskLayout("v2t", ("video",), ("text",), False, ("video", "text"), "video captioning"),
)}
assert tuple(t.token for t in TASKS.values()) == TASK_TOKENS


@dataclass
class TaskExample:
    """One training sequence.

    Attributes:
        input_ids: LongTensor ``[L]`` of global ids.
        loss_mask: BoolTensor ``[L]``, True exactly on the output tokens (``i >= prefix_len``).
        prefix_len: number of condition tokens, the output's opening boundary included (prefix-LM attention).
        task: the task name.
        condition_dropped: True when classifier-free-guidance dropout emptied the condition.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    prefix_len: int
    task: str
    condition_dropped: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class ParsedSequence:
    """What :func:`parse_sequence` read from a sequence (local codes throughout).

    Attributes:
        task: the task name.
        text: text ids (condition or output), or ``None`` when the sequence has no text segment.
        video: LongTensor ``[T', H', W']``: condition and output frames concatenated (the image frame of t2i/i2v
            included), or ``None``.
        audio: LongTensor ``[L, frames]``, condition and output concatenated, or ``None``.
        condition, output: per segment kind (``"text"``, ``"image"``, ``"video"``, ``"audio"``) the local codes of
            the condition and of the output part alone.
        condition_dropped: every condition segment was empty (a CFG-dropout example).
        repairs: human-readable list of every change ``repair=True`` made (empty for a valid sequence).
    """

    task: str
    text: list[int] | None = None
    video: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    condition: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    condition_dropped: bool = False
    repairs: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- audio layout
def flatten_audio(codes: torch.Tensor, pattern: str = "frame_major") -> torch.Tensor:
    """``[L, frames]`` -> ``[L * frames]`` in the given pattern (values are not changed)."""
    _check_pattern(pattern)
    if codes.dim() != 2:
        raise ValueError(f"audio codes must be [levels, frames], got shape {tuple(codes.shape)}")
    return codes.t().reshape(-1) if pattern == "frame_major" else codes.reshape(-1)


def unflatten_audio(flat: torch.Tensor, num_levels: int, pattern: str = "frame_major") -> torch.Tensor:
    """Inverse of :func:`flatten_audio`: ``[L * frames]`` -> ``[L, frames]``."""
    _check_pattern(pattern)
    if flat.numel() % num_levels:
        raise ValueError(f"{flat.numel()} audio tokens are not a whole number of {num_levels}-level frames")
    frames = flat.numel() // num_levels
    return flat.reshape(frames, num_levels).t().contiguous() if pattern == "frame_major" \
        else flat.reshape(num_levels, frames)


def _audio_levels_at(n: int, num_levels: int, pattern: str) -> torch.Tensor:
    """RVQ level of each position of a flattened ``[num_levels, n // num_levels]`` block."""
    pos = torch.arange(n)
    return pos % num_levels if pattern == "frame_major" else pos // max(n // num_levels, 1)


def _check_pattern(pattern: str) -> None:
    if pattern not in AUDIO_PATTERNS:
        raise ValueError(f"unknown audio pattern {pattern!r}; expected one of {AUDIO_PATTERNS}")


# -------------------------------------------------------------------------------------------------------- builders
def build_example(task: str, vocab: UnifiedVocabulary, *, text: Sequence[int] | torch.Tensor | None = None,
                  video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                  cond_frames: int | None = None, audio_split: int | None = None, cond_dropout: float = 0.0,
                  rng: random.Random | None = None, audio_pattern: str = "frame_major",
                  num_audio_levels: int | None = None, text_condition: bool | None = None,
                  video_runs: bool = False) -> TaskExample:
    """Build the training sequence of one example for ``task`` (layouts in the module docstring).

    Args:
        task: one of :data:`TASKS`.
        vocab: the unified vocabulary.
        text: local text ids (list or 1-D LongTensor); used by t2v/t2i/v2t, and as the optional condition of
            i2v/v2a/a2v/vcont/avcont (see ``text_condition``).
        video: local video codes ``[T', H', W']``.
        audio: local audio codes ``[n_q, frames]``; the first ``num_audio_levels`` rows are used.
        cond_frames: vcont/avcont: latent frames in the condition (default ``T' // 2``, at least 1).
        audio_split: avcont: audio frames in the condition (default: the same fraction of the audio as
            ``cond_frames`` is of the video, rounded).
        cond_dropout: probability of replacing the condition by an empty one (classifier-free guidance).
        rng: source of the dropout draw (``random.Random``; the module's global generator when ``None``).
        audio_pattern: ``"frame_major"`` or ``"level_major"``.
        num_audio_levels: RVQ levels kept (default ``vocab.num_audio_levels``).
        text_condition: the optional leading ``<bot> text <eot>`` condition of the tasks marked ``[text]``:
            ``None`` adds it when ``text`` is given, ``False`` never, ``True`` always (``text`` required).
        video_runs: write the video condition segments in run-length form (needs a vocabulary with run tokens;
            runs are at most ``vocab.max_video_run`` cells). Outputs stay plain codes.
    """
    drop = False
    if cond_dropout:
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be a probability, got {cond_dropout}")
        drop = (rng.random() if rng is not None else random.random()) < cond_dropout
    cond, out = _segments(task, vocab, text=text, video=video, audio=audio, cond_frames=cond_frames,
                          audio_split=audio_split, audio_pattern=audio_pattern, num_audio_levels=num_audio_levels,
                          text_condition=text_condition, video_runs=video_runs)
    if drop:
        cond = [(kind, body[:0]) for kind, body in cond]
    pieces = [torch.tensor([vocab.bos_id, vocab.token_id(TASKS[task].token)])]
    for kind, body in cond:
        pieces += _wrap(vocab, kind, body)
    n_prefix = sum(p.numel() for p in pieces) + 1  # + the output's opening boundary
    for kind, body in out:
        pieces += _wrap(vocab, kind, body)
    pieces.append(torch.tensor([vocab.eos_id]))
    input_ids = torch.cat(pieces)
    loss_mask = torch.arange(input_ids.numel()) >= n_prefix
    return TaskExample(input_ids, loss_mask, n_prefix, task, drop)


def build_prompt(task: str, vocab: UnifiedVocabulary, *, text: Sequence[int] | torch.Tensor | None = None,
                 video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                 cond_frames: int | None = None, audio_split: int | None = None, unconditional: bool = False,
                 audio_pattern: str = "frame_major", num_audio_levels: int | None = None,
                 text_condition: bool | None = None, video_runs: bool = False) -> torch.Tensor:
    """The prefix of :func:`build_example` (ending with the output's opening boundary) for generation.

    Only the condition is needed: for vcont/avcont/i2v, ``video`` (and ``audio``) may hold just the condition part
    (``cond_frames``/``audio_split`` default to all of it then); ``unconditional=True`` empties the condition
    bodies, which gives the classifier-free-guidance prompt. ``video_runs=True`` writes the video condition in
    run-length form, as a model trained with it saw it.
    """
    layout = _layout(task)
    if task in ("vcont", "avcont") and video is not None and cond_frames is None:
        cond_frames = int(video.shape[0])
    if task == "avcont" and audio is not None and audio_split is None:
        audio_split = int(audio.shape[-1])
    cond, _ = _segments(task, vocab, text=text, video=video, audio=audio, cond_frames=cond_frames,
                        audio_split=audio_split, audio_pattern=audio_pattern, num_audio_levels=num_audio_levels,
                        need_output=False, text_condition=text_condition, video_runs=video_runs)
    if unconditional:
        cond = [(kind, body[:0]) for kind, body in cond]
    pieces = [torch.tensor([vocab.bos_id, vocab.token_id(layout.token)])]
    for kind, body in cond:
        pieces += _wrap(vocab, kind, body)
    pieces.append(torch.tensor([vocab.token_id(BOUNDARY_TOKENS[layout.output[0]][0])]))
    return torch.cat(pieces)


def output_constraints(task: str, vocab: UnifiedVocabulary, *, latent_hw: tuple[int, int],
                       video_frames: int | None = None, audio_frames: int | None = None,
                       cond_frames: int | None = None, audio_split: int | None = None,
                       audio_pattern: str = "frame_major", num_audio_levels: int | None = None) -> torch.Tensor:
    """Allowed id range of every output token after :func:`build_prompt`'s prompt, for constrained decoding.

    Returns a LongTensor ``[n, 2]`` of ``[lo, hi)`` per position: the output bodies (the video range, or the exact
    RVQ level's range for audio), the boundaries after the first opener, and ``<eos>`` (``hi = lo + 1`` for those).
    A generator that samples position ``i`` inside ``[lo_i, hi_i)`` produces a sequence :func:`parse_sequence`
    always accepts. Sizes are those of :func:`build_example` (``video_frames`` = T' of the whole video,
    ``audio_frames`` of the whole audio; for vcont/avcont the condition part is ``cond_frames``/``audio_split``,
    defaults as in :func:`build_example`). Text outputs (v2t) have no fixed length: decode them up to ``<eot>``.
    """
    layout = _layout(task)
    if "text" in layout.output:
        raise ValueError(f"{task} outputs text, which has no fixed length: constrain to the text range and <eot>")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if video_frames is None and task not in ("t2i", "v2a"):  # these outputs do not depend on the video length
        raise ValueError(f"{task}: video_frames (T' of the whole video) is needed to size the output")
    if audio_frames is None and "audio" in layout.output:
        raise ValueError(f"{task}: audio_frames is needed to size the output")
    video = torch.zeros(1 if video_frames is None else int(video_frames), h, w, dtype=torch.long)
    levels = vocab.num_audio_levels if num_audio_levels is None else int(num_audio_levels)
    audio = torch.zeros(levels, 1 if audio_frames is None else int(audio_frames), dtype=torch.long) \
        if "audio" in layout.needs else None
    text = [0] if "text" in layout.needs else None
    ex = build_example(task, vocab, text=text, video=video, audio=audio, cond_frames=cond_frames,
                       audio_split=audio_split, audio_pattern=audio_pattern, num_audio_levels=num_audio_levels)
    out = ex.input_ids[ex.prefix_len:]  # every body code is local 0: the start of its (level's) range
    lo = out.clone()
    hi = out + 1
    video_start = vocab.range_of("video").start if vocab.has("video") else -1
    is_video = out == video_start
    hi[is_video] = vocab.range_of("video").stop
    if vocab.has("audio"):
        cb = vocab.spec("audio").codebook_size
        is_audio = (out >= vocab.range_of("audio").start) & (out < vocab.range_of("audio").stop)
        hi[is_audio] = out[is_audio] + cb
    return torch.stack([lo, hi], dim=-1)


def _wrap(vocab: UnifiedVocabulary, kind: str, body: torch.Tensor) -> list[torch.Tensor]:
    open_tok, close_tok = BOUNDARY_TOKENS[kind]
    return [torch.tensor([vocab.token_id(open_tok)]), body, torch.tensor([vocab.token_id(close_tok)])]


def _layout(task: str) -> TaskLayout:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def _segments(task, vocab, *, text, video, audio, cond_frames, audio_split, audio_pattern, num_audio_levels,
              need_output: bool = True, text_condition: bool | None = None, video_runs: bool = False
              ) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """(condition, output) lists of (segment kind, flat global ids)."""
    layout = _layout(task)
    _check_pattern(audio_pattern)
    if video_runs and not vocab.max_video_run:
        raise ValueError(f"video_runs=True needs a vocabulary with run tokens, this one has none ({vocab.describe()}); "
                         "build it with UnifiedVocabulary(..., max_video_run=n) or vocab.with_video_runs(n)")
    needs = layout.needs if need_output else _condition_needs(layout)
    if text_condition and not layout.optional_text:
        raise ValueError(f"task {task!r} has no optional text condition (text_condition=True)")
    if layout.optional_text and (text_condition or (text_condition is None and text is not None)):
        needs = ("text", *needs)
    elif "text" not in needs:
        text = None  # unused modalities are ignored
    if "audio" not in layout.needs:
        audio = None
    given = {"text": text, "video": video, "audio": audio}
    missing = [name for name in needs if given[name] is None]
    if missing:
        got = ", ".join(k for k, v in given.items() if v is not None) or "nothing"
        raise ValueError(f"task {task!r} needs {' and '.join(missing)} (got {got})")

    text_g = video_codes = audio_codes = None
    if text is not None:
        t = torch.as_tensor(text, dtype=torch.long) if not isinstance(text, torch.Tensor) else text
        if t.dim() != 1 or t.dtype.is_floating_point:
            raise ValueError(f"text must be a 1-D sequence of integer ids, got shape {tuple(t.shape)} {t.dtype}")
        text_g = vocab.to_global("text", t.long())
    if video is not None:
        if not isinstance(video, torch.Tensor) or video.dim() != 3 or video.dtype.is_floating_point:
            raise ValueError("video must be a LongTensor of local codes [T', H', W'], got "
                             f"{_shape_str(video)}")
        if video.shape[0] < 1 or video.shape[1] < 1 or video.shape[2] < 1:
            raise ValueError(f"video codes must be non-empty, got shape {tuple(video.shape)}")
        video_codes = video.long()
        vocab.to_global("video", video_codes)  # validates the range once
    if audio is not None:
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or audio.dtype.is_floating_point:
            raise ValueError(f"audio must be a LongTensor of local codes [n_q, frames], got {_shape_str(audio)}")
        levels = vocab.num_audio_levels if num_audio_levels is None else int(num_audio_levels)
        if not vocab.has("audio"):
            raise ValueError(f"this vocabulary has no audio range ({vocab.describe()})")
        if not 1 <= levels <= vocab.num_audio_levels:
            raise ValueError(f"num_audio_levels must be in [1, {vocab.num_audio_levels}], got {levels}")
        if audio.shape[0] < levels:
            raise ValueError(f"audio codes have {audio.shape[0]} levels, {levels} are needed")
        if audio.shape[1] < 1:
            raise ValueError("audio codes have no frames")
        audio_codes = vocab.to_global("audio", audio[:levels].long())  # [L, frames]

    def video_seg(codes: torch.Tensor) -> torch.Tensor:
        return vocab.to_global("video", codes.reshape(-1))  # (t, h, w) order

    def cond_video_seg(codes: torch.Tensor) -> torch.Tensor:
        if not video_runs:
            return video_seg(codes)
        return video_runs_to_global(run_length_encode_video(codes, max_run=vocab.max_video_run), vocab)

    def audio_seg(codes_g: torch.Tensor) -> torch.Tensor:
        return flatten_audio(codes_g, audio_pattern)

    cond: list[tuple[str, torch.Tensor]] = []
    out: list[tuple[str, torch.Tensor]] = []
    if layout.optional_text and text_g is not None:
        cond.append(("text", text_g))

    if task in ("t2v", "t2i"):
        cond.append(("text", text_g))
        if need_output:
            out.append(("video", video_seg(video_codes)) if task == "t2v" else ("image", video_seg(video_codes[:1])))
    elif task == "i2v":
        cond.append(("image", video_seg(video_codes[:1])))
        if need_output:
            if video_codes.shape[0] < 2:
                raise ValueError(f"i2v needs at least 2 latent frames (the image and 1+ to predict), got "
                                 f"{video_codes.shape[0]}")
            out.append(("video", video_seg(video_codes[1:])))
    elif task == "v2a":
        cond.append(("video", cond_video_seg(video_codes)))
        if need_output:
            out.append(("audio", audio_seg(audio_codes)))
    elif task == "a2v":
        cond.append(("audio", audio_seg(audio_codes)))
        if need_output:
            out.append(("video", video_seg(video_codes)))
    elif task == "v2t":
        cond.append(("video", cond_video_seg(video_codes)))
        if need_output:
            out.append(("text", text_g))
    else:  # vcont, avcont
        n = video_codes.shape[0]
        k = max(1, n // 2) if cond_frames is None else int(cond_frames)
        hi = n - 1 if need_output else n
        if not 1 <= k <= hi:
            raise ValueError(f"{task}: cond_frames must be in [1, {hi}] for a video of {n} latent frames, got {k}")
        cond.append(("video", cond_video_seg(video_codes[:k])))
        if task == "avcont":
            frames = audio_codes.shape[1]
            s = round(k / n * frames) if audio_split is None else int(audio_split)
            hi_a = frames - 1 if need_output else frames
            if not 0 <= s <= hi_a:
                raise ValueError(f"avcont: audio_split must be in [0, {hi_a}] for {frames} audio frames, got {s}")
            cond.append(("audio", audio_seg(audio_codes[:, :s])))
        if need_output:
            out.append(("video", video_seg(video_codes[k:])))
            if task == "avcont":
                out.append(("audio", audio_seg(audio_codes[:, s:])))
    return cond, out


def _condition_needs(layout: TaskLayout) -> tuple[str, ...]:
    kinds = {"image": "video"}
    return tuple(dict.fromkeys(kinds.get(k, k) for k in layout.condition))


def _shape_str(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} dtype {x.dtype}"
    return type(x).__name__


# ---------------------------------------------------------------------------------------------------------- parser
def parse_sequence(ids: Sequence[int] | torch.Tensor, vocab: UnifiedVocabulary, *, task: str | None = None,
                   latent_hw: tuple[int, int] | None = None, video_frames: int | None = None,
                   audio_frames: int | None = None, cond_frames: int | None = None,
                   audio_split: int | None = None, audio_pattern: str = "frame_major",
                   num_audio_levels: int | None = None, repair: bool = False) -> ParsedSequence:
    """Read a task sequence (a built example, or a prompt followed by generated tokens) back into local codes.

    Leading and trailing ``<pad>`` are ignored. Validates: ``<bos>``, the task token (against ``task`` when given),
    every segment's boundaries in the task's order, every body id in its segment's range (per RVQ level for
    audio), whole latent frames (``latent_hw = (H', W')`` is needed for video and image segments), the expected
    totals when ``video_frames`` (T' of the whole video, condition included) / ``audio_frames`` are given (and the
    condition sizes when ``cond_frames`` / ``audio_split`` are), and ``<eos>`` at the end. A video body may be in
    run-length form (``<run_k>`` tokens; :mod:`mmtok.run_length`): it is decoded into codes, and a malformed run (in
    frame 0, past its frame's end) is a :class:`SequenceError`.

    By default the first problem raises :class:`SequenceError` naming it. With ``repair=True`` the parser fixes what
    it can and lists each change in ``.repairs``: missing boundaries/``<bos>``/``<eos>`` are assumed, tokens after
    ``<eos>`` dropped, out-of-range ids replaced by local code 0 (removed from text), short segments padded with
    code 0 and long ones truncated (to the expected size, else to whole frames); a malformed run still expands
    (cells it would copy from before frame 0 become code 0). A sequence without a readable task
    token needs ``task=``; a task token other than ``task=`` always raises.
    """
    _check_pattern(audio_pattern)
    toks = _token_list(ids)
    levels = vocab.num_audio_levels if num_audio_levels is None else int(num_audio_levels)
    problem = _Problems(repair)
    toks, offset = _strip_padding(toks, vocab, problem)
    task, pos = _read_header(toks, vocab, task, problem)
    bodies = _read_segments(toks, pos, offset, vocab, TASKS[task], problem)
    result = ParsedSequence(task=task, repairs=problem.repairs)
    _read_bodies(result, bodies, vocab, latent_hw=latent_hw, video_frames=video_frames, audio_frames=audio_frames,
                 cond_frames=cond_frames, audio_split=audio_split, audio_pattern=audio_pattern, levels=levels,
                 problem=problem)
    _join_modalities(result)
    return result


# The parser's steps, in the order parse_sequence runs them. ``offset`` (the leading padding stripped) puts the
# positions of segment problems back into the caller's sequence.
class _Problems:
    """What the parser does with a problem: raise :class:`SequenceError` naming it, or (``repair=True``) note the
    fix it makes in ``repairs`` and go on."""

    def __init__(self, repair: bool) -> None:
        self.repair = repair
        self.repairs: list[str] = []

    def __call__(self, message: str, fix: str) -> None:
        if not self.repair:
            raise SequenceError(message)
        self.repairs.append(fix)


def _token_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor) and (ids.dim() != 1 or ids.dtype.is_floating_point):
        raise SequenceError(f"parse_sequence takes one 1-D integer sequence, got shape {tuple(ids.shape)} "
                            f"{ids.dtype}")
    return ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]


def _strip_padding(toks: list[int], vocab: UnifiedVocabulary, problem: _Problems) -> tuple[list[int], int]:
    """The tokens without leading and trailing ``<pad>`` (ids outside the vocabulary become ``<pad>`` in repair
    mode), and the number of leading pads dropped."""
    pad = vocab.pad_id
    lo, hi = 0, len(toks)
    while lo < hi and toks[lo] == pad:
        lo += 1
    while hi > lo and toks[hi - 1] == pad:
        hi -= 1
    toks = toks[lo:hi]
    if not toks:
        raise SequenceError("empty sequence (nothing but padding)")
    bad = [t for t in toks if not 0 <= t < vocab.size]
    if bad:
        problem(f"{len(bad)} ids outside the vocabulary [0, {vocab.size}), e.g. {bad[0]}",
                f"replaced {len(bad)} ids outside the vocabulary by <pad> before parsing")
        toks = [t if 0 <= t < vocab.size else pad for t in toks]
    return toks, lo


def _read_header(toks: list[int], vocab: UnifiedVocabulary, task: str | None,
                 problem: _Problems) -> tuple[str, int]:
    """``<bos>`` and the task token: the task (the token's, checked against ``task=`` when given) and the position
    after them."""
    name = vocab.token_name
    n = len(toks)
    task_ids = {vocab.token_id(t.token): t.name for t in TASKS.values()}
    pos = 0
    if toks[0] == vocab.bos_id:
        pos = 1
    else:
        problem(f"sequence does not start with <bos> (found {name(toks[0])})", "assumed a missing <bos> at the start")
    found = task_ids.get(toks[pos]) if pos < n else None
    if found is not None:
        pos += 1
    if task is not None:
        _layout(task)
        if found is None:
            problem(f"missing task token {TASKS[task].token} at position {pos} "
                    f"(found {name(toks[pos]) if pos < n else 'end of sequence'})",
                    f"assumed the missing task token {TASKS[task].token}")
        elif found != task:  # the structure follows the token, so this is the caller's mistake: never repaired
            raise SequenceError(f"sequence is a {found!r} sequence, task={task!r} was asked")
    elif found is None:
        raise SequenceError(f"no task token after <bos> (found {name(toks[pos]) if pos < n else 'end of sequence'});"
                            " pass task= to parse it")
    return (task if task is not None else found), pos


def _read_segments(toks: list[int], pos: int, offset: int, vocab: UnifiedVocabulary, layout: TaskLayout,
                   problem: _Problems) -> list[tuple[str, str, list[int]]]:
    """From ``pos`` on: each segment of the task's plan between its boundaries, then ``<eos>`` and nothing after it.

    Returns ``(role, kind, body ids)`` per segment, ``role`` ``"cond"`` or ``"out"``. A body ends at its closing
    boundary or at the next structural token (``<bos>``, ``<eos>``, a task token, an opening boundary), so a missing
    closing boundary does not swallow the next segment.
    """
    name = vocab.token_name
    n = len(toks)
    task_ids = {vocab.token_id(t.token) for t in TASKS.values()}
    opens = {vocab.token_id(o) for o, _ in BOUNDARY_TOKENS.values()}
    structural = task_ids | opens | {vocab.bos_id, vocab.eos_id}

    plan = [("cond", k) for k in layout.condition] + [("out", k) for k in layout.output]
    if layout.optional_text and pos < n and toks[pos] == vocab.token_id("<bot>"):
        plan.insert(0, ("cond", "text"))

    bodies: list[tuple[str, str, list[int]]] = []
    for role, kind in plan:
        open_tok, close_tok = BOUNDARY_TOKENS[kind]
        open_id, close_id = vocab.token_id(open_tok), vocab.token_id(close_tok)
        if pos < n and toks[pos] == open_id:
            pos += 1
        else:
            problem(f"expected {open_tok} at position {pos + offset} for the {role} {kind} segment, found "
                    f"{name(toks[pos]) if pos < n else 'end of sequence'}",
                    f"assumed a missing {open_tok} at position {pos + offset}")
        start = pos
        while pos < n and toks[pos] != close_id and toks[pos] not in structural:
            pos += 1
        body = toks[start:pos]
        if pos < n and toks[pos] == close_id:
            pos += 1
        else:
            problem(f"the {role} {kind} segment starting at position {start + offset} is not closed by {close_tok} "
                    f"(found {name(toks[pos]) if pos < n else 'end of sequence'})",
                    f"assumed a missing {close_tok} at position {pos + offset}")
        bodies.append((role, kind, body))
    if pos < n and toks[pos] == vocab.eos_id:
        pos += 1
    else:
        problem(f"expected <eos> at position {pos + offset}, found "
                f"{name(toks[pos]) if pos < n else 'end of sequence'}",
                "assumed a missing <eos>")
    if pos < n:
        problem(f"{n - pos} tokens after <eos> (first: {name(toks[pos])})",
                f"dropped {n - pos} tokens after <eos>")
    return bodies


def _read_bodies(result: ParsedSequence, bodies: list[tuple[str, str, list[int]]], vocab: UnifiedVocabulary, *,
                 latent_hw: tuple[int, int] | None, video_frames: int | None, audio_frames: int | None,
                 cond_frames: int | None, audio_split: int | None, audio_pattern: str, levels: int,
                 problem: _Problems) -> None:
    """Each body -> local codes in ``result.condition`` / ``result.output`` (and ``result.text``), with range and
    count checks. Segments are read in order: an output's expected size subtracts the condition frames read before
    it when ``cond_frames`` / ``audio_split`` are not given."""
    task = result.task
    cond_video_frames = cond_audio_frames = 0
    for role, kind, body in bodies:
        where = f"{role} {kind} segment"
        part = result.condition if role == "cond" else result.output
        if kind == "text":
            part["text"] = result.text = _text_codes(body, vocab, where, problem)
        elif kind in ("image", "video"):
            if latent_hw is None:
                raise SequenceError("latent_hw=(H', W') is needed to parse video and image segments")
            expect = _expected_video_frames(task, role, kind, body, video_frames=video_frames,
                                            cond_frames=cond_frames, cond_video_frames=cond_video_frames)
            part[kind] = _video_codes(body, expect, latent_hw, vocab, where, role, problem)
            if role == "cond":
                cond_video_frames += part[kind].shape[0]
        else:  # audio
            if not vocab.has("audio"):
                raise SequenceError(f"the sequence has an audio segment but the vocabulary has no audio")
            if not 1 <= levels <= vocab.num_audio_levels:
                raise ValueError(f"num_audio_levels must be in [1, {vocab.num_audio_levels}], got {levels}")
            expect = _expected_audio_frames(task, role, body, audio_frames=audio_frames, audio_split=audio_split,
                                            cond_audio_frames=cond_audio_frames)
            part["audio"] = _audio_codes(body, expect, levels, audio_pattern, vocab, where, role, problem)
            if role == "cond":
                cond_audio_frames += part["audio"].shape[1]


def _text_codes(body: list[int], vocab: UnifiedVocabulary, where: str, problem: _Problems) -> list[int]:
    """Local text ids of a text body; ids of other ranges are removed."""
    r = vocab.range_of("text")
    wrong = [t for t in body if t not in r]
    if wrong:
        problem(f"{len(wrong)} ids in the {where} are not text ids, e.g. {vocab.token_name(wrong[0])}",
                f"removed {len(wrong)} non-text ids from the {where}")
    return [t - r.start for t in body if t in r]


def _expected_video_frames(task: str, role: str, kind: str, body: list[int], *, video_frames: int | None,
                           cond_frames: int | None, cond_video_frames: int) -> int | None:
    """Latent frames an image or video segment must hold (``None``: any whole number)."""
    if kind == "image":
        return 0 if (role == "cond" and not body) else 1
    if role == "cond":
        expect = cond_frames if task in ("vcont", "avcont") else video_frames
        if not body and task in ("vcont", "avcont", "v2a", "v2t"):
            expect = 0  # a dropped condition (CFG) is valid
        return expect
    before = 1 if task == "i2v" else (
        (cond_video_frames if cond_frames is None else int(cond_frames))
        if task in ("vcont", "avcont") else 0)
    expect = None if video_frames is None else video_frames - before
    if expect is not None and expect < 1:
        raise SequenceError(f"video_frames={video_frames} leaves no output frames for {task}")
    return expect


def _video_codes(body: list[int], expect: int | None, latent_hw: tuple[int, int], vocab: UnifiedVocabulary,
                 where: str, role: str, problem: _Problems) -> torch.Tensor:
    """Local video codes ``[T', H', W']`` of an image or video body (whole frames; wrong ids become code 0)."""
    per_frame = int(latent_hw[0]) * int(latent_hw[1])
    cells = _expand_video_runs(body, per_frame, vocab, where, problem)
    if cells is not body:  # counts below are of cells, not of the body's tokens
        where = f"{where} (its runs expanded)"
    codes = _fix_count(cells, per_frame, expect, where, "latent frames", problem, allow_empty=role == "cond")
    return torch.tensor(_to_local_or_zero(codes, vocab.range_of("video"), where, problem, vocab.token_name),
                        dtype=torch.long).reshape(-1, int(latent_hw[0]), int(latent_hw[1]))


def _expand_video_runs(body: list[int], per_frame: int, vocab: UnifiedVocabulary, where: str,
                       problem: _Problems) -> list[int]:
    """A video body in run-length form -> the plain body of global ids (a body without run tokens is returned as
    is). Runs are checked first; a malformed one is a problem, and in repair mode it still expands (cells copied from
    before frame 0 become the -1 placeholder, later code 0). Ids of other ranges pass through, one cell each, for the
    range check that follows."""
    if not vocab.has("video_run"):
        return body
    runs = vocab.range_of("video_run")
    if not any(t in runs for t in body):
        return body
    # local run-length form over global ids: a run -k, anything else its (non-negative) id
    tokens = torch.tensor([runs.start - t - 1 if t in runs else t for t in body], dtype=torch.long)
    try:  # a partial last frame is left to the count check that follows, which names it and pads or truncates
        check_run_length(tokens, cells_per_frame=per_frame, max_run=vocab.max_video_run, whole_frames=False)
    except RunLengthError as e:
        problem(f"the {where} has a malformed run-length form: {e}",
                f"expanded the malformed runs of the {where} (cells before frame 0 as code 0)")
    return expand_runs(tokens, cells_per_frame=per_frame, fill=-1).tolist()


def _expected_audio_frames(task: str, role: str, body: list[int], *, audio_frames: int | None,
                           audio_split: int | None, cond_audio_frames: int) -> int | None:
    """Audio frames an audio segment must hold (``None``: any whole number)."""
    if role == "cond":
        expect = audio_split if task == "avcont" else audio_frames
        if not body and task in ("avcont", "a2v"):
            expect = 0
        return expect
    before = (cond_audio_frames if audio_split is None else int(audio_split)) if task == "avcont" else 0
    expect = None if audio_frames is None else audio_frames - before
    if expect is not None and expect < 1:
        raise SequenceError(f"audio_frames={audio_frames} leaves no output frames for {task}")
    return expect


def _audio_codes(body: list[int], expect: int | None, levels: int, audio_pattern: str, vocab: UnifiedVocabulary,
                 where: str, role: str, problem: _Problems) -> torch.Tensor:
    """Local audio codes ``[levels, frames]`` of an audio body; each id must be a code of its own RVQ level (the
    ``audio_pattern`` says which), others become code 0."""
    codes = _fix_count(body, levels, expect, where, "audio frames", problem, allow_empty=role == "cond")
    lvl = _audio_levels_at(len(codes), levels, audio_pattern).tolist()
    local, wrong = [], 0
    first_wrong = None
    for t, lv in zip(codes, lvl):
        r = vocab.range_of("audio", level=lv)
        if t in r:
            local.append(t - r.start)
        else:
            wrong += 1
            first_wrong = first_wrong if first_wrong is not None else (t, lv)
            local.append(0)
    if wrong:
        problem(f"{wrong} ids in the {where} are not codes of their RVQ level ({audio_pattern}), e.g. "
                f"{vocab.token_name(first_wrong[0])} where level {first_wrong[1]} was expected",
                f"replaced {wrong} wrong-level or non-audio ids in the {where} by code 0")
    return unflatten_audio(torch.tensor(local, dtype=torch.long), levels, audio_pattern)


def _join_modalities(result: ParsedSequence) -> None:
    """The whole video and audio (condition then output, empty parts left out) and ``condition_dropped``."""
    frames = [part[k] for part in (result.condition, result.output) for k in ("image", "video") if k in part]
    frames = [f for f in frames if f.shape[0]]
    result.video = torch.cat(frames, dim=0) if frames else None
    audio_parts = [part["audio"] for part in (result.condition, result.output) if "audio" in part]
    audio_parts = [a for a in audio_parts if a.shape[1]]
    result.audio = torch.cat(audio_parts, dim=1) if audio_parts else None
    cond_sizes = [len(v) if isinstance(v, list) else v.numel() for v in result.condition.values()]
    result.condition_dropped = bool(cond_sizes) and all(s == 0 for s in cond_sizes)


def _fix_count(body: list[int], unit: int, expect_units: int | None, where: str, what: str, problem,
               allow_empty: bool) -> list[int]:
    """Check that ``body`` holds ``expect_units`` units of ``unit`` tokens (whole units if unknown); repair by
    padding with a placeholder (-1, turned into code 0 later) or truncating."""
    n = len(body)
    if expect_units is not None:
        target = expect_units * unit
        if n != target:
            action = (f"truncated the {where} from {n} to {target} tokens" if n > target else
                      f"padded the {where} with {target - n} code-0 tokens to {target}")
            problem(f"the {where} has {n} tokens, {target} expected ({expect_units} {what} of {unit})", action)
    else:
        if n == 0 and allow_empty:
            return []
        target = max(-(-n // unit), 1) * unit  # whole units, at least one
        if n != target:
            problem(f"the {where} has {n} tokens, not a whole number of {what} of {unit} tokens",
                    f"padded the {where} with {target - n} code-0 tokens to {target}")
    return body[:target] + [-1] * max(target - n, 0)


def _to_local_or_zero(codes: list[int], r: range, where: str, problem, name) -> list[int]:
    wrong = [t for t in codes if t != -1 and t not in r]
    if wrong:
        problem(f"{len(wrong)} ids in the {where} are not video codes, e.g. {name(wrong[0])}",
                f"replaced {len(wrong)} non-video ids in the {where} by code 0")
    return [t - r.start if t in r else 0 for t in codes]
