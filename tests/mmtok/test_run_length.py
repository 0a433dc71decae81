"""Run-length form of video codes: exact round trips, lengths, max_run splitting, malformed lists, global ids."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.interface import CodeSpec
from mmtok.run_length import (RunLengthError, check_run_length, expand_runs, run_cells, run_length_decode_video,
                              run_length_encode_video, video_runs_from_global, video_runs_to_global)
from mmtok.vocab import UnifiedVocabulary


def test_worked_example_of_the_module_docstring():
    codes = torch.tensor([[[5, 5, 7, 7]], [[5, 5, 7, 9]], [[5, 5, 7, 9]]])  # [T'=3, H'=1, W'=4]
    tokens = run_length_encode_video(codes)
    assert tokens.tolist() == [5, 5, 7, 7, -3, 9, -4]
    assert run_cells(tokens).tolist() == [1, 1, 1, 1, 3, 1, 4]
    assert torch.equal(run_length_decode_video(tokens, latent_hw=(1, 4)), codes)
    # max_run=2 splits a stretch of 3 into 2 + 1 and a whole frame of 4 into 2 + 2
    tokens = run_length_encode_video(codes, max_run=2)
    assert tokens.tolist() == [5, 5, 7, 7, -2, -1, 9, -2, -2]
    assert torch.equal(run_length_decode_video(tokens, latent_hw=(1, 4), max_run=2), codes)


def test_runs_are_per_frame_and_compare_with_the_same_cell_one_frame_earlier():
    # frame 1 equals frame 0 shifted by one cell: no cell equals *its own* cell one frame earlier -> no run
    f0 = torch.tensor([[1, 2], [3, 4]])
    codes = torch.stack([f0, f0.roll(1, dims=1)])
    assert run_length_encode_video(codes).tolist() == codes.flatten().tolist()
    # a stretch that would continue into the next frame stops at the frame's end: two runs, one per frame
    codes = torch.tensor([[[1, 2, 3]], [[9, 2, 3]], [[9, 2, 3]]])
    assert run_length_encode_video(codes).tolist() == [1, 2, 3, 9, -2, -3]


def test_no_repeats_keep_every_code_and_a_static_clip_costs_one_token_per_frame():
    t, h, w = 4, 3, 5
    distinct = torch.arange(t * h * w).view(t, h, w)  # no cell ever equals the one before it
    tokens = run_length_encode_video(distinct)
    assert torch.equal(tokens, distinct.flatten())
    static = torch.randint(0, 100, (1, h, w)).expand(t, h, w).contiguous()
    assert run_length_encode_video(static).numel() == h * w + (t - 1)
    for max_run in (1, 4, 7, 15, 40):
        tokens = run_length_encode_video(static, max_run=max_run)
        assert tokens.numel() == h * w + (t - 1) * math.ceil(h * w / max_run)
        assert int(run_cells(tokens).max()) <= max_run
        assert torch.equal(run_length_decode_video(tokens, latent_hw=(h, w), max_run=max_run), static)


@settings(max_examples=200, deadline=None)
@given(t=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 4), k=st.integers(1, 4),
       max_run=st.one_of(st.none(), st.integers(1, 17)), seed=st.integers(0, 2**31 - 1))
def test_round_trip_is_exact_with_many_repeats_and_with_few(t, h, w, k, max_run, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (t, h, w), generator=g)  # k = 1: a static clip; larger k: fewer repeats
    tokens = run_length_encode_video(codes, max_run=max_run)
    assert torch.equal(run_length_decode_video(tokens, latent_hw=(h, w), max_run=max_run), codes)
    # every cell is counted exactly once, and a run folds exactly its repeated cells
    assert int(run_cells(tokens).sum()) == codes.numel()
    repeated = int((codes[1:] == codes[:-1]).sum())
    assert int(run_cells(tokens)[tokens < 0].sum()) == repeated
    assert tokens.numel() == codes.numel() - repeated + int((tokens < 0).sum())
    assert int((tokens[:h * w] < 0).sum()) == 0  # frame 0 as is


def test_malformed_lists_raise_naming_the_problem():
    with pytest.raises(RunLengthError, match="frame 0"):
        check_run_length([1, -1, 2, 3], cells_per_frame=2)
    with pytest.raises(RunLengthError, match="passes the frame's end"):
        check_run_length([1, 2, 3, 4, -3], cells_per_frame=3)           # frame 1: 1 code, then a run of 3 cells
    with pytest.raises(RunLengthError, match="passes the frame's end"):
        run_length_decode_video([1, 2, -3, 4], latent_hw=(1, 2))
    with pytest.raises(RunLengthError, match="longer than max_run=2"):
        check_run_length([1, 2, 3, -3], cells_per_frame=3, max_run=2)
    with pytest.raises(RunLengthError, match="whole latent frames"):
        run_length_decode_video([1, 2, 3, -1], latent_hw=(1, 3))
    check_run_length([1, 2, 3, -1], cells_per_frame=3, whole_frames=False)  # a partial last frame may be allowed
    with pytest.raises(ValueError, match=r"\[T', H', W'\]"):
        run_length_encode_video(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        run_length_encode_video(torch.tensor([[[-1]]]))
    with pytest.raises(ValueError, match="max_run"):
        run_length_encode_video(torch.zeros(2, 1, 1, dtype=torch.long), max_run=0)
    assert issubclass(RunLengthError, ValueError)


def test_expand_runs_is_the_lenient_decoding():
    # a run in frame 0 has nothing to copy: ``fill``, which a later run of the same cell copies in turn
    assert expand_runs([1, -1, 2, -1], cells_per_frame=2).tolist() == [1, -1, 2, -1]
    assert expand_runs([1, -1, 2, -1], cells_per_frame=2, fill=0).tolist() == [1, 0, 2, 0]
    assert expand_runs([7, 8, -3], cells_per_frame=2).tolist() == [7, 8, 7, 8, 7]  # past the frame end: keeps copying
    assert expand_runs([], cells_per_frame=4).tolist() == []


def test_global_ids_map_codes_to_the_video_range_and_runs_to_run_tokens():
    vocab = UnifiedVocabulary(text=CodeSpec("text", 10), video=CodeSpec("video", 20), max_video_run=4)
    tokens = torch.tensor([3, 19, 0, -4, 5, -1])
    ids = video_runs_to_global(tokens, vocab)
    assert [vocab.token_name(i) for i in ids] == ["video:3", "video:19", "video:0", "<run_4>", "video:5", "<run_1>"]
    assert torch.equal(video_runs_from_global(ids, vocab), tokens)
    with pytest.raises(ValueError, match="run lengths"):
        video_runs_to_global([1, -5], vocab)                           # <run_5> does not exist
    with pytest.raises(ValueError, match="run token ids"):
        video_runs_from_global([vocab.token_id("<bos>")], vocab)
    with pytest.raises(ValueError, match="no run tokens"):
        video_runs_to_global([1, -1], vocab.without_video_runs())
