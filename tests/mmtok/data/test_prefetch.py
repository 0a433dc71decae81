"""StepPrefetcher (mmtok.data.prefetch): the same values as the plain loop, in order or not, errors passed on, and
RandomClips batches identical when prepared by worker threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mmtok.data.media import write_video
from mmtok.data.prefetch import StepPrefetcher
from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Three noise videos of different lengths and one corrupt file."""
    root = tmp_path_factory.mktemp("prefetch")
    rng = np.random.default_rng(0)
    for i, t in enumerate((9, 17, 25)):
        write_video(root / f"clip{i}.mp4", rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8), 8.0, crf=0)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    return root


def test_values_are_the_plain_loops_and_made_ahead_in_threads():
    threads, lock = set(), threading.Lock()

    def make(step: int) -> int:
        with lock:
            threads.add(threading.current_thread().name)
        return step * step

    with StepPrefetcher(make, start=3, stop=20, workers=2, depth=4) as batches:
        assert [batches.get(s) for s in range(3, 20)] == [s * s for s in range(3, 20)]
    assert threads and all(name.startswith("prefetch") for name in threads)


def test_out_of_order_and_skipped_steps_and_the_plain_mode():
    calls = []

    def make(step: int) -> int:
        calls.append(step)
        return -step

    with StepPrefetcher(make, start=0, stop=10, workers=1, depth=2) as batches:
        assert batches.get(0) == 0
        assert batches.get(5) == -5          # jumped ahead: steps 1..4 are not waited for
        assert batches.get(2) == -2          # behind the prefetched window: made in this thread
        assert batches.get(6) == -6
    assert max(calls) <= 9                   # nothing past stop
    plain = StepPrefetcher(make, start=0, stop=10, workers=0)
    calls.clear()
    assert plain.get(4) == -4 and calls == [4]


def test_errors_reach_the_caller_of_that_step():
    def make(step: int) -> int:
        if step == 2:
            raise ValueError("step 2 is broken")
        return step

    with StepPrefetcher(make, start=0, stop=5, workers=2) as batches:
        assert batches.get(0) == 0 and batches.get(1) == 1
        with pytest.raises(ValueError, match="step 2 is broken"):
            batches.get(2)
        assert batches.get(3) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        StepPrefetcher(lambda s: s, start=0, stop=1, workers=-1)
    with pytest.raises(ValueError, match="depth"):
        StepPrefetcher(lambda s: s, start=0, stop=1, depth=0)


def test_random_clips_batches_are_the_same_from_worker_threads(media):
    cfg = VideoClipConfig(source=str(media), num_frames=9, size=16, flip=True, brightness=0.2, crop_scale=[0.5, 1.0])
    plain = RandomClips(find_records(cfg), cfg, seed=3)
    expected = [plain.batch(s, 3) for s in range(8)]
    threaded = RandomClips(find_records(cfg), cfg, seed=3)
    with StepPrefetcher(lambda s: threaded.batch(s, 3), start=0, stop=8, workers=3) as batches:
        got = [batches.get(s) for s in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    # the corrupt file is recorded once, though several threads may have met it
    assert len(threaded.report.entries) == len(plain.report.entries) == 1
    assert threaded.report.entries[0]["id"] == plain.report.entries[0]["id"]
    # what a checkpoint keeps of it, and a resumed loader that takes it back gives the same later batches
    state = threaded.skipped_state()
    assert state == plain.skipped_state() and len(state["bad_indices"]) == 1
    resumed = RandomClips(find_records(cfg), cfg, seed=3)
    resumed.restore_skipped(state)
    assert resumed.bad == threaded.bad and torch.equal(resumed.batch(9, 3), plain.batch(9, 3))
