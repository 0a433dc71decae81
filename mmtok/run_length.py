"""A lossless run-length form of video codes, for conditioning prefixes.

Video codes ``[T', H', W']`` are flattened in (t, h, w) order: latent frame after latent frame, each in raster
order. Much of a frame usually repeats the frame before it (a static background, an object that has not moved), and a
condition segment (v2a, continuation, captioning) spends one token on every such cell although the model can read it
off one frame earlier. The run-length form keeps latent frame 0 as it is and, in every later frame, folds each maximal
stretch of ``k`` consecutive cells (in raster order, within the frame) whose code equals the code at the same
``(h, w)`` of the previous latent frame into one run token ``<run_k>``; the other cells keep their codes. A stretch
longer than ``max_run`` becomes several runs of at most ``max_run`` cells. Runs never cross a frame's end, so every
frame starts with a fresh token and a token's (frame, cell) is known from the lengths before it.

Example, ``H' x W' = 1 x 4``::

    frame 0: 5 5 7 7   frame 1: 5 5 7 9   frame 2: 5 5 7 9
    tokens:  5 5 7 7   <run_3> 9          <run_4>

Decoding is exact: a run's cells copy the cells at the same places one frame earlier (already decoded, possibly
themselves from a run). The form is only defined with the previous frame's codes at hand, so outputs the LM
*generates* stay plain codes (:mod:`mmtok.sequence` writes run-length form into condition segments only).

Local form used here: a 1-D LongTensor whose non-negative entries are video codes and whose negative entries ``-k``
are runs of ``k`` cells. :func:`video_runs_to_global` / :func:`video_runs_from_global` map it to and from the unified
vocabulary's ids (the codes' ``video`` range and the ``video_run`` range of
``UnifiedVocabulary(max_video_run=n)``, where ``<run_k>`` is :meth:`~mmtok.vocab.UnifiedVocabulary.run_token_id`).

API: :func:`run_length_encode_video`, :func:`run_length_decode_video` (strict inverse), :func:`check_run_length`
(the validation alone), :func:`expand_runs` (the lenient expansion a repairing parser uses), :func:`run_cells` (cells
per token), :class:`RunLengthError`. All pure tensor functions, no Python loop over tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = [
    "RunLengthError",
    "check_run_length",
    "expand_runs",
    "run_cells",
    "run_length_decode_video",
    "run_length_encode_video",
    "video_runs_from_global",
    "video_runs_to_global",
]


class RunLengthError(ValueError):
    """A run-length token list is malformed: a run in frame 0, a run past its frame's end, a run longer than
    ``max_run``, or cells that do not fill whole latent frames."""


# ------------------------------------------------------------------------------------------------------ encode
def run_length_encode_video(codes: torch.Tensor, *, max_run: int | None = None) -> torch.Tensor:
    """Run-length form of video codes ``[T', H', W']`` -> LongTensor ``[N]`` (codes ``>= 0``, runs ``-k``).

    Args:
        codes: local video codes ``[T', H', W']`` (non-negative integers).
        max_run: the longest run token (``None``: a whole latent frame, ``H' * W'``); a longer stretch of repeated
            cells is split into runs of ``max_run`` cells and a shorter last one.

    ``N = T' * H' * W'`` when nothing repeats; a frame equal to the one before it costs ``ceil(H' W' / max_run)``
    tokens.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.dtype.is_floating_point \
            or codes.dtype == torch.bool:
        raise ValueError(f"video codes must be an integer tensor [T', H', W'], got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    if codes.numel() and int(codes.min()) < 0:
        raise ValueError(f"video codes must be >= 0 (negative values mark runs in the run-length form), got "
                         f"{int(codes.min())}")
    t, h, w = codes.shape
    cells = h * w
    max_run = _check_max_run(max_run, cells)
    flat = codes.reshape(t, cells).long()                                               # [T, C]
    same = torch.zeros_like(flat, dtype=torch.bool)                                     # [T, C]
    if t > 1:
        same[1:] = flat[1:] == flat[:-1]
    idx = torch.arange(cells).expand(t, cells)                                          # [T, C]
    # For a repeated cell: where its stretch started (the last plain cell before it, +1) and ended (the next one).
    last_plain = torch.where(~same, idx, torch.full_like(idx, -1)).cummax(dim=1).values  # [T, C]
    next_plain = torch.where(~same, idx, torch.full_like(idx, cells)).flip(1).cummin(dim=1).values.flip(1)
    offset = idx - last_plain - 1                                                       # place in its stretch
    run_start = same & (offset % max_run == 0)                                          # a run token starts here
    run_len = torch.minimum(next_plain - idx, torch.full_like(idx, max_run))            # cells it covers
    emit = ~same | run_start                                                            # [T, C]
    values = torch.where(same, -run_len, flat)                                          # [T, C]
    return values[emit]                                                                 # row-major: (t, h, w)


# ------------------------------------------------------------------------------------------------------ decode
def run_cells(tokens: torch.Tensor) -> torch.Tensor:
    """Latent cells each token stands for: 1 for a code, ``k`` for a run ``-k``; ``[N]`` -> ``[N]``."""
    return torch.where(tokens < 0, -tokens, torch.ones_like(tokens))


def check_run_length(tokens: Sequence[int] | torch.Tensor, *, cells_per_frame: int, max_run: int | None = None,
                     whole_frames: bool = True) -> None:
    """Raise :class:`RunLengthError` naming the first problem of a run-length token list, if any.

    Checked: every run lies in a frame after the first, ends at or before its frame's end and is at most
    ``max_run`` cells long (when given); with ``whole_frames`` the tokens fill whole latent frames of
    ``cells_per_frame`` cells.
    """
    tokens = _as_tokens(tokens)
    c = int(cells_per_frame)
    if c < 1:
        raise ValueError(f"cells_per_frame must be >= 1, got {cells_per_frame}")
    n = run_cells(tokens)                                                               # [N]
    start = n.cumsum(0) - n                                                             # first cell of each token
    is_run = tokens < 0
    if max_run is not None:
        bad = (is_run & (n > int(max_run))).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise RunLengthError(f"token {i} is a run of {int(n[i])} cells, longer than max_run={max_run}")
    bad = (is_run & (start < c)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise RunLengthError(f"token {i} is a run (of {int(n[i])} cells) in latent frame 0, cell {int(start[i])}: "
                             "frame 0 has no previous frame to repeat")
    bad = (is_run & (start % c + n > c)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        f, cell = divmod(int(start[i]), c)
        raise RunLengthError(f"token {i} is a run of {int(n[i])} cells starting at cell {cell} of latent frame {f}: "
                             f"it passes the frame's end ({c} cells per frame)")
    total = int(n.sum())
    if whole_frames and total % c:
        raise RunLengthError(f"the tokens cover {total} cells, not whole latent frames of {c} cells "
                             f"({total // c} frames and {total % c} cells)")


def expand_runs(tokens: Sequence[int] | torch.Tensor, *, cells_per_frame: int, fill: int = -1) -> torch.Tensor:
    """The cell values of a run-length token list, without validation: ``[N]`` -> ``[cells]``.

    A run cell copies the cell ``cells_per_frame`` places before it (the same ``(h, w)`` one frame earlier), or is
    ``fill`` when there is none (a run in frame 0). Any list expands; for a valid one (:func:`check_run_length`) this
    is the exact decoding. Token values ``>= 0`` are copied unchanged, so they may be local codes or global ids.
    """
    tokens = _as_tokens(tokens)
    c = int(cells_per_frame)
    if c < 1:
        raise ValueError(f"cells_per_frame must be >= 1, got {cells_per_frame}")
    n = run_cells(tokens)                                                               # [N]
    total = int(n.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    frames = -(-total // c)
    per_cell = tokens.repeat_interleave(n)                                              # [cells] the token of each
    is_code = torch.zeros(frames * c, dtype=torch.bool)
    is_code[:total] = per_cell >= 0
    values = torch.zeros(frames * c, dtype=torch.long)
    values[:total] = per_cell.clamp(min=0)
    # Each cell takes the value of the latest frame (at or before its own) that has a code at that (h, w).
    frame_idx = torch.arange(frames)[:, None].expand(frames, c)                         # [F, C]
    source = torch.where(is_code.view(frames, c), frame_idx, torch.full_like(frame_idx, -1)).cummax(dim=0).values
    out = values.view(frames, c).gather(0, source.clamp(min=0))                         # [F, C]
    out = torch.where(source >= 0, out, torch.full_like(out, int(fill)))
    return out.reshape(-1)[:total]


def run_length_decode_video(tokens: Sequence[int] | torch.Tensor, *, latent_hw: tuple[int, int],
                            max_run: int | None = None) -> torch.Tensor:
    """Exact inverse of :func:`run_length_encode_video`: tokens ``[N]`` -> codes ``[T', H', W']``.

    Raises :class:`RunLengthError` for a malformed list (see :func:`check_run_length`).
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    check_run_length(tokens, cells_per_frame=h * w, max_run=max_run)
    return expand_runs(tokens, cells_per_frame=h * w).reshape(-1, h, w)


# ------------------------------------------------------------------------------------------- unified vocabulary
def video_runs_to_global(tokens: Sequence[int] | torch.Tensor, vocab: Any) -> torch.Tensor:
    """Local run-length tokens -> global ids: codes into the ``video`` range, ``-k`` into ``<run_k>``.

    ``vocab`` is a :class:`~mmtok.vocab.UnifiedVocabulary` with run tokens (``max_video_run >= k`` for every run).
    """
    tokens = _as_tokens(tokens)
    is_run = tokens < 0
    out = torch.empty_like(tokens)
    out[~is_run] = vocab.to_global("video", tokens[~is_run])
    if bool(is_run.any()):
        out[is_run] = vocab.run_token_id(-tokens[is_run])
    return out


def video_runs_from_global(ids: Sequence[int] | torch.Tensor, vocab: Any) -> torch.Tensor:
    """Global ids of a video body (codes and run tokens) -> local run-length tokens (the inverse of
    :func:`video_runs_to_global`); an id of another range raises ``ValueError``."""
    ids = _as_tokens(ids)
    video = vocab.range_of("video")
    is_code = (ids >= video.start) & (ids < video.stop)
    out = torch.empty_like(ids)
    out[is_code] = ids[is_code] - video.start
    if bool((~is_code).any()):
        out[~is_code] = -vocab.run_length_of(ids[~is_code])
    return out


# -------------------------------------------------------------------------------------------------- helpers
def _as_tokens(tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(list(tokens), dtype=torch.long)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"run-length tokens must be a 1-D integer sequence, got shape {tuple(t.shape)} {t.dtype}")
    return t.long()


def _check_max_run(max_run: int | None, cells: int) -> int:
    if max_run is None:
        return max(cells, 1)
    if int(max_run) < 1:
        raise ValueError(f"max_run must be >= 1, got {max_run}")
    return int(max_run)
