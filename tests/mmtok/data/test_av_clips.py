"""AVClips: whole clips decoded into memory with their captions, bad records skipped; epoch_batch's draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmtok.data.av_clips import AVClips, epoch_batch
from mmtok.data.ingest import ClipConfig
from mmtok.data.media import write_video

CFG = ClipConfig(fps=8, num_frames=4, size=16, sample_rate=16000, pad=True)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three clips with audio (one in validation), one without an audio track, one corrupt file."""
    root = tmp_path_factory.mktemp("av")
    t = np.arange(8000) / 16000
    for i in range(3):
        frames = np.full((6, 16, 16, 3), 40 * i, np.uint8)
        write_video(root / f"c{i}.mp4", frames, 8, audio=(0.2 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(
            np.float32), sample_rate=16000)
    write_video(root / "mute.mp4", np.zeros((6, 16, 16, 3), np.uint8), 8)
    (root / "broken.mp4").write_bytes(b"not a video")
    lines = [{"id": "c0", "video": "c0.mp4", "captions": ["zero", "nought"], "split": "train"},
             {"id": "c1", "video": "c1.mp4", "caption": "one", "split": "train"},
             {"id": "c2", "video": "c2.mp4", "caption": "two", "split": "validation"},
             {"id": "mute", "video": "mute.mp4", "caption": "silent", "split": "train"},
             {"id": "bad", "video": "broken.mp4", "caption": "broken", "split": "train"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "manifest.jsonl"


def test_clips_are_stacked_with_captions_and_bad_records_reported(manifest):
    clips = AVClips.load(manifest, cfg=CFG, split="train")
    assert clips.ids == ["c0", "c1"] and clips.captions == [["zero", "nought"], ["one"]]
    assert clips.frames.shape == (2, 4, 16, 16, 3) and clips.frames.dtype == torch.uint8
    assert clips.audio.shape == (2, 8000) and clips.audio.abs().max() > 0.1       # 4 frames at 8 fps: 0.5 s
    assert sorted(e["id"] for e in clips.report.entries) == ["bad", "mute"]
    video = clips.video([1])
    assert video.shape == (1, 3, 4, 16, 16) and video.min() >= -1 and video.max() <= 1
    sub = clips.subset([1])
    assert sub.ids == ["c1"] and torch.equal(sub.audio, clips.audio[1:])
    silent = AVClips.load(manifest, cfg=ClipConfig(fps=8, num_frames=4, size=16, sample_rate=None), limit=4)
    assert silent.audio is None and silent.ids == ["c0", "c1", "c2", "mute"]


def test_load_refuses_what_it_cannot_stack(manifest):
    with pytest.raises(ValueError, match="needs num_frames, fps and size"):
        AVClips.load(manifest, cfg=ClipConfig(num_frames=None))
    with pytest.raises(ValueError, match="no video records"):
        AVClips.load(manifest, cfg=CFG, split="test")
    with pytest.raises(ValueError, match="disagree on the number of clips"):
        AVClips(["a"], torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8), None, [[], []])


def test_epoch_batch_sees_every_item_once_an_epoch_and_splits_ranks():
    first = [i for step in range(5) for i in epoch_batch(10, step, 2, seed=0)]
    assert sorted(first) == list(range(10))                                          # 5 steps of 2: one epoch
    assert epoch_batch(10, 3, 2, seed=0) == epoch_batch(10, 3, 2, seed=0) != epoch_batch(10, 3, 2, seed=1)
    ranks = [epoch_batch(10, 0, 2, seed=0, rank=r, world=2) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(epoch_batch(10, 0, 4, seed=0))      # ranks share the global batch
    assert len(epoch_batch(3, 0, 5, seed=0)) == 5                                    # wraps into the next epoch
