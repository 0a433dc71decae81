"""The frame convention (mmtok.frames): uint8 [..., T, H, W, 3] <-> float [..., 3, T, H, W] in [-1, 1]."""

import numpy as np
import pytest
import torch

from mmtok.frames import from_uint8, to_uint8


def test_every_pixel_value_survives_the_round_trip():
    frames = torch.arange(256, dtype=torch.uint8).repeat(3 * 2).view(2, 4, 8, 8, 3)   # [B, T, H, W, 3]
    video = from_uint8(frames)
    assert video.shape == (2, 3, 4, 8, 8) and video.dtype == torch.float32
    assert float(video.min()) == -1.0 and float(video.max()) == 1.0                     # 0 -> -1, 255 -> 1
    assert torch.equal(video[1, 2, 3, 4, 5], frames[1, 3, 4, 5, 2].float() / 127.5 - 1)  # channel-first
    assert torch.equal(to_uint8(video), frames)
    assert torch.equal(to_uint8(video[0]), frames[0])                                    # one clip [3, T, H, W]


def test_to_uint8_clamps_rounds_and_takes_numpy_and_uint8():
    video = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 6).expand(3, 1, 1, 6)  # [3, T, H, W]
    assert to_uint8(video)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]
    assert torch.equal(to_uint8(video.numpy()), to_uint8(video))
    frames = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    assert to_uint8(frames) is frames                                                    # already frames


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, T, H, W\]"):
        to_uint8(torch.zeros(4, 8, 8, 3))              # channel-last float: not the convention
    with pytest.raises(ValueError, match="uint8"):
        to_uint8(np.zeros((4, 8, 8, 3), np.int32))
    with pytest.raises(ValueError, match="uint8 frames"):
        from_uint8(torch.zeros(4, 8, 8, 3))
