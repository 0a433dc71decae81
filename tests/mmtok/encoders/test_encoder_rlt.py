"""Run-length tokenization: static tubelets dropped, moving ones kept, exact run lengths, packed clips."""

import pytest
import torch

from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel
from mmtok.encoders.embeddings import patchify_video
from mmtok.encoders.rlt import rlt_keep_mask, run_lengths

T, P, SIDE = 4, 4, 16  # 4 frames of 16x16, 1x4x4 tubelets: a 4 x 4 x 4 grid


def moving_square_clip(seed: int = 0) -> torch.Tensor:
    """A static textured background ``[3, T, 16, 16]`` in [-1, 1] with a white 4x4 square in tubelet row 0, at
    column ``t`` in frame ``t``, and a faint flicker (mean change 0.01) on tubelet (3, 3)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(3, 1, SIDE, SIDE, generator=g) * 1.6 - 0.8
    clip = background.repeat(1, T, 1, 1)
    for t in range(T):
        clip[:, t, 0:P, t * P:(t + 1) * P] = 1.0
        clip[:, t, 12:16, 12:16] += 0.01 * (-1) ** t
    return clip


# kept (t, row, col) beyond the first frame, and the run length of every kept tubelet of row 0
EXPECTED_LATER = {(1, 0, 0), (1, 0, 1), (2, 0, 1), (2, 0, 2), (3, 0, 2), (3, 0, 3)}
EXPECTED_RUNS_ROW0 = {(0, 0): 1, (1, 0): 3, (0, 1): 1, (1, 1): 1, (2, 1): 2, (0, 2): 2, (2, 2): 1, (3, 2): 1,
                      (0, 3): 3, (3, 3): 1}


def test_static_tubelets_dropped_moving_ones_kept_with_exact_runs():
    tubelets = patchify_video(moving_square_clip()[None], 1, P).reshape(1, T, 16, -1)   # [1, T', S, D]
    keep = rlt_keep_mask(tubelets, threshold=0.05)[0]                                   # [T', S]
    kept = {(t, s // 4, s % 4) for t, s in keep.nonzero().tolist()}
    assert kept == {(0, r, c) for r in range(4) for c in range(4)} | EXPECTED_LATER
    runs = run_lengths(keep[None])[0]                                                   # [T', S]
    assert {(t, c): runs[t, c].item() for t in range(T) for c in range(4) if keep[t, c]} == EXPECTED_RUNS_ROW0
    assert runs[0, 4:].eq(T).all()                           # static places (and the sub-threshold flicker): one run
    assert runs.sum(0).eq(T).all()


def test_run_lengths_cover_every_time_step():
    keep = torch.rand(3, 7, 5) > 0.5
    keep[:, 0] = True
    runs = run_lengths(keep)
    assert runs.sum(1).eq(7).all() and runs[~keep].eq(0).all() and runs[keep].ge(1).all()


def _encoder(**overrides) -> PatchEncoderModel:
    cfg = PatchEncoderConfig.from_preset("debug", modality="video", tubelet_size=1, **overrides)
    return PatchEncoderModel(cfg).eval()


def test_encoder_keeps_the_rlt_tokens_with_run_length_sizes():
    model = _encoder(rlt_threshold=0.05)
    video = torch.stack([moving_square_clip(0), moving_square_clip(1)])
    video[1, :, 1:] = video[1, :, :1]                        # clip 1: a still image, one time step kept
    out = model(pixel_values=video)
    assert out.num_tokens.tolist() == [16 + len(EXPECTED_LATER), 16]
    assert out.last_hidden_state.shape == (out.num_tokens.sum().item(), 32)
    assert out.cu_seqlens.tolist() == [0, 22, 38]
    assert out.sizes[:22].sum().item() == T * 16 and out.sizes[22:].eq(T).all()


def test_threshold_zero_and_a_fresh_run_length_embedding_change_nothing():
    plain = _encoder()
    rlt = _encoder(rlt_threshold=0.0)
    missing = rlt.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["embeddings.run_length.weight"]   # zero at init: training-free RLT
    video = torch.stack([moving_square_clip(0), moving_square_clip(1)])
    a, b = plain(pixel_values=video), rlt(pixel_values=video)
    assert b.num_tokens.tolist() == [64, 64]
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["padded", "block_mask", "per_clip"])
@pytest.mark.parametrize("tome_r", [0, 3])
def test_packed_clips_never_see_each_other(impl, tome_r):
    model = _encoder(rlt_threshold=0.05, packed_attention=impl, tome_r=tome_r)
    first = moving_square_clip(0)
    out = model(pixel_values=torch.stack([first, moving_square_clip(1)]))
    still = moving_square_clip(2)
    still[:, 1:] = still[:, :1]
    other = model(pixel_values=torch.stack([first, still]))
    assert out.num_tokens[1] != other.num_tokens[1]
    n0 = out.num_tokens[0].item()
    torch.testing.assert_close(other.last_hidden_state[:n0], out.last_hidden_state[:n0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.pooler_output[0], out.pooler_output[0], rtol=1e-5, atol=1e-5)


def test_run_length_embedding_is_trained():
    model = _encoder(rlt_threshold=0.05).train()
    model(pixel_values=moving_square_clip()[None]).pooler_output.square().sum().backward()
    grad = model.embeddings.run_length.weight.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0 and grad[3].abs().sum() > 0  # runs 1, 3, 4
