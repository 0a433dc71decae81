"""Augmentation of training clips (mmtok.data.video_clips): identity when off, shapes and ranges, determinism in
(seed, step), temporal strides, flips, colour jitter, resized crops and their evaluation view; fixed evaluation clips
spread over sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmtok.data.ingest import ClipRecord, interleave_sources
from mmtok.data.media import read_video, write_video
from mmtok.data.video_clips import RandomClips, VideoClipConfig, fixed_clips

FPS = 8.0


def numbered(t: int, size: int = 32) -> np.ndarray:
    """Frame ``i`` is grey level ``7 i`` with a coloured, textured corner (so crops, flips and colour differ)."""
    frames = np.empty((t, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(t):
        frames[i] = 7 * i
        frames[i, : size // 2, : size // 4, 0] = 200
        frames[i, : size // 2, : size // 4, 1] = (yy[: size // 2, : size // 4] * 9) % 256
        frames[i, : size // 2, : size // 4, 2] = (xx[: size // 2, : size // 4] * 31) % 256
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    write_video(root / "long.mp4", numbered(33), FPS, crf=0)          # 33 frames: room for stride 2
    write_video(root / "short.mp4", numbered(9), FPS, crf=0)          # one 9-frame clip
    write_video(root / "grey.mp4", np.repeat(numbered(9)[..., :1], 3, axis=-1), FPS, crf=0)
    return root


def clips(root, name: str, **cfg) -> RandomClips:
    config = VideoClipConfig(source=str(root), num_frames=9, fps=FPS, size=16, resize=32, **cfg)
    return RandomClips([ClipRecord(id=name, video=root / f"{name}.mp4")], config, seed=3)


def grey_levels(batch: torch.Tensor) -> np.ndarray:
    """The frame number of each frame, read back from the grey level of its untouched bottom-right quarter."""
    return np.rint(batch[..., 8:, 8:, :].double().mean((-1, -2, -3)).numpy() / 7).astype(int)


ALL_ON = dict(crop_scale=[0.5, 1.0], flip=True, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1,
              frame_steps=[1, 2])


def test_identity_when_off(videos):
    """The defaults draw nothing extra: batches equal those of a config that spells every option out as off."""
    plain = clips(videos, "long")
    spelled = clips(videos, "long", crop_scale=None, flip=False, brightness=0.0, contrast=0.0, saturation=0.0,
                    hue=0.0, frame_steps=[1])
    for step in range(3):
        assert torch.equal(plain.batch(step, 4), spelled.batch(step, 4))
    first = grey_levels(plain.batch(0, 4))
    assert (np.diff(first, axis=1) == 1).all()                                   # consecutive frames


def test_all_on_shapes_range_and_determinism(videos):
    a, b = clips(videos, "long", **ALL_ON), clips(videos, "long", **ALL_ON)
    batches = [a.batch(s, 4) for s in range(3)]
    assert all(x.shape == (4, 9, 16, 16, 3) and x.dtype == torch.uint8 for x in batches)
    assert all(torch.equal(x, b.batch(s, 4)) for s, x in enumerate(batches))        # a function of (seed, step)
    assert not torch.equal(batches[0], batches[1])
    assert torch.equal(a.batch(1, 4), batches[1])                                    # and not of what came before
    # the evaluation view is not augmented (only crop_scale sets its scale)
    assert np.array_equal(a.load(0, None), clips(videos, "long", crop_scale=[0.5, 1.0]).load(0, None))


def test_frame_steps(videos):
    data = clips(videos, "long", frame_steps=[1, 2])
    steps = set()
    for s in range(12):
        levels = grey_levels(data.batch(s, 2))
        for row in levels:
            (step,) = set(np.diff(row))
            steps.add(int(step))
    assert steps == {1, 2}
    assert set(np.diff(grey_levels(clips(videos, "long", frame_steps=[2]).batch(0, 3)), axis=1).ravel()) == {2}
    # a 9-frame record fits no stride but 1: every sample takes it
    short = clips(videos, "short", frame_steps=[1, 2])
    assert all((np.diff(grey_levels(short.batch(s, 2)), axis=1) == 1).all() for s in range(4))


def test_flip_mirrors_the_same_crop(videos):
    plain, flipped = clips(videos, "long"), clips(videos, "long", flip=True)
    seen = set()
    for s in range(6):
        for x, y in zip(plain.batch(s, 2), flipped.batch(s, 2)):
            same, mirrored = torch.equal(x, y), torch.equal(x.flip(2), y)
            assert same or mirrored
            seen.add("same" if same else "mirrored")
    assert seen == {"same", "mirrored"}


def test_colour_jitter(videos):
    plain = clips(videos, "long")
    bright = clips(videos, "long", brightness=0.3)
    for s in range(4):
        x, y = plain.batch(s, 2).double(), bright.batch(s, 2).double()
        ratio = y.sum((1, 2, 3, 4)) / x.sum((1, 2, 3, 4))
        assert ((ratio > 0.69) & (ratio < 1.31)).all() and not torch.allclose(ratio, torch.ones(2, dtype=ratio.dtype))
    # saturation and hue turn colours, never grey: a grey clip stays grey (to rounding)
    grey = clips(videos, "grey", saturation=0.5, hue=0.5, contrast=0.3)
    out = grey.batch(0, 3).int()
    assert (out.max(-1).values - out.min(-1).values).max() <= 1
    coloured = clips(videos, "long", hue=0.5).batch(0, 3).double()
    assert not torch.allclose(coloured, plain.batch(0, 3).double(), atol=2)
    contrast = clips(videos, "long", contrast=0.5).batch(0, 1).double()
    base = plain.batch(0, 1).double()
    assert contrast.std() != pytest.approx(float(base.std()), rel=1e-3)


def test_resized_crop_zooms_and_evaluation_sees_the_whole_frame(videos):
    data = clips(videos, "long", crop_scale=[0.5, 1.0])
    batch = data.batch(0, 4)
    assert batch.shape == (4, 9, 16, 16, 3)
    whole = read_video(videos / "long.mp4", fps=FPS, num_frames=9, size=16)
    assert (data.load(0, None).astype(int) - whole.astype(int)).__abs__().max() <= 1
    # without crop_scale, evaluation is the centre 16x16 of the 32x32 frame
    centre = read_video(videos / "long.mp4", fps=FPS, num_frames=9, size=32)[:, 8:24, 8:24]
    assert np.array_equal(clips(videos, "long").load(0, None), centre)


@pytest.mark.parametrize("bad, message", [
    (dict(crop_scale=[0.8, 0.5]), "crop_scale"), (dict(crop_scale=[0.5]), "crop_scale"),
    (dict(brightness=1.5), "brightness"), (dict(hue=0.7), "hue"), (dict(frame_steps=[0]), "frame_steps"),
    (dict(frame_steps=[]), "frame_steps"),
])
def test_bad_settings_name_the_field(videos, bad, message):
    with pytest.raises(ValueError, match=message):
        clips(videos, "long", **bad)


def test_fixed_clips_spread_over_sources(videos):
    records = [ClipRecord(id=f"{s}-{k}", video=videos / "short.mp4", meta={"source": s})
               for s in ("a", "b") for k in range(3)]
    assert [r.id for r in interleave_sources(records)] == ["a-0", "b-0", "a-1", "b-1", "a-2", "b-2"]
    plain = [ClipRecord(id=str(k), video=videos / "short.mp4") for k in range(3)]
    assert interleave_sources(plain) == plain                       # no sources named: the order is kept
    broken = ClipRecord(id="a-x", video=videos / "missing.mp4", meta={"source": "a"})
    cfg = VideoClipConfig(source=str(videos), num_frames=9, fps=FPS, size=16)
    out, used, bad = fixed_clips([broken, *records], cfg, 3)
    assert out.shape == (3, 9, 16, 16, 3) and [r.id for r in used] == ["b-0", "a-0", "b-1"]
    assert [b["id"] for b in bad] == ["a-x"]
