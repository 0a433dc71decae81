"""Moving-Digits scoring (mmtok/datasets/moving_digits/evaluation.py) on ground-truth inputs: a perfect "model"
scores like the probe on the truth, baselines are computed as defined, and the zero-shot class prompts name the
digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmtok.datasets.moving_digits.corpus import COLORS, DIRECTIONS, TONE_HZ, generate_corpus, load_ground_truth
from mmtok.datasets.moving_digits.evaluation import (
    PROBE_LABELS, copy_last_frame, digit_labels, digit_prompts, load_clips, make_probe, probe_labels,
    score_continuation, score_t2v, score_v2a, tokenizer_reconstruction, trajectory_error,
)
from mmtok.datasets.moving_digits.probes import centroid_track
from mmtok.frames import from_uint8
from mmtok.metrics import wilson_interval


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "md"
    generate_corpus(root, num_clips=12, seed=3, size=64, num_frames=17, num_workers=0, progress=False)
    return root


@pytest.fixture(scope="module")
def clips(corpus):
    return load_clips(corpus, split="train", limit=8)


@pytest.fixture(scope="module")
def probe(corpus):
    return make_probe(corpus)


def test_load_clips_shapes_and_filters(corpus, clips):
    assert len(clips) >= 4
    c = clips[0]
    assert c.frames.shape == (17, 64, 64, 3) and c.frames.dtype == np.uint8
    assert c.audio.shape == (round(17 / 8 * 16000),) and c.audio.dtype == np.float32
    assert c.truth["id"] == c.id and c.caption
    assert all(not x.held_out for x in clips)  # held-out combinations are test-only
    assert all(x.held_out for x in load_clips(corpus, split="test", held_out=True))
    assert len(load_clips(corpus, split="train", limit=2)) == 2
    with pytest.raises(FileNotFoundError):
        load_clips(corpus / "nope")


def test_t2v_on_ground_truth_is_near_perfect(probe, clips):
    metrics, records = score_t2v(probe, [c.frames for c in clips], [c.truth for c in clips],
                                 references=[c.frames for c in clips])
    by = {m.name: m for m in metrics}
    assert set(by) == {"t2v/digit_accuracy", "t2v/color_accuracy", "t2v/direction_accuracy"}
    assert by["t2v/digit_accuracy"].value >= 0.85
    assert by["t2v/color_accuracy"].value == 1.0
    assert by["t2v/direction_accuracy"].value >= 0.75
    assert by["t2v/digit_accuracy"].baseline == pytest.approx(0.1)
    assert by["t2v/color_accuracy"].baseline == pytest.approx(1 / 6)
    assert by["t2v/direction_accuracy"].baseline == pytest.approx(1 / 8)
    assert by["t2v/digit_accuracy"].reference == by["t2v/digit_accuracy"].value
    for m in metrics:   # a Wilson interval around every accuracy, on its n samples
        hits = round(m.value * m.n)
        assert m.interval == pytest.approx(wilson_interval(hits, m.n)) and m.interval[0] <= m.value <= m.interval[1]
    assert all(m.beats_baseline for m in metrics) and len(records) == len(clips)


def test_t2v_on_wrong_clips_scores_low(probe, clips):
    """Blank frames show nothing: no digit can be read, so accuracy falls to (at most) chance levels."""
    blank = [np.zeros_like(c.frames) for c in clips]
    metrics, _ = score_t2v(probe, blank, [c.truth for c in clips])
    assert {m.name: m for m in metrics}["t2v/digit_accuracy"].value == 0.0


def test_v2a_on_ground_truth_audio(probe, clips):
    metrics, records = score_v2a(probe, [c.audio for c in clips], [c.truth for c in clips],
                                 references=[c.audio for c in clips])
    by = {m.name: m for m in metrics}
    assert by["v2a/pitch_accuracy"].value == 1.0 and by["v2a/pitch_accuracy"].baseline == pytest.approx(0.1)
    f1 = by["v2a/click_f1"]
    assert f1.value >= 0.8 and f1.value > f1.baseline
    # the no-clicks baseline: F1 1 for clips without bounces, 0 otherwise
    no_bounce = np.mean([not c.truth["bounce_times"] for c in clips])
    assert f1.baseline >= no_bounce - 1e-9
    # silence scores the no-clicks baseline exactly (and pitch from silence is not meaningful)
    silent, _ = score_v2a(probe, [np.zeros_like(c.audio) for c in clips], [c.truth for c in clips])
    assert {m.name: m for m in silent}["v2a/click_f1"].value == pytest.approx(no_bounce)


def test_copy_last_frame_and_continuation_metrics(clips):
    k = 9
    ctx = [c.frames[:k] for c in clips]
    truth = [c.frames[k:] for c in clips]
    copy = copy_last_frame(ctx[0], 8)
    assert copy.shape == (8, 64, 64, 3) and (copy == ctx[0][-1]).all()
    with pytest.raises(ValueError):
        copy_last_frame(np.zeros((0, 4, 4, 3), np.uint8), 2)
    # the truth as the "generated" continuation: infinite PSNR, zero trajectory error, beats copy-last-frame
    metrics, records = score_continuation(truth, ctx, truth)
    by = {m.name: m for m in metrics}
    assert math.isinf(by["continuation/psnr"].value)
    assert by["continuation/trajectory_error"].value == pytest.approx(0.0)
    assert by["continuation/trajectory_error"].baseline > 1.0  # the glyphs move
    assert by["continuation/trajectory_error"].beats_baseline
    # copy-last-frame as the "generated" continuation scores exactly the baseline
    metrics, _ = score_continuation([copy_last_frame(x, 8) for x in ctx], ctx, truth)
    for m in metrics:
        assert m.value == pytest.approx(m.baseline)
        assert m.beats_baseline is False
    # the baseline PSNR is computed on [0, 1] frames: check one by hand
    c0, t0 = copy_last_frame(ctx[0], 8).astype(np.float64) / 255, truth[0].astype(np.float64) / 255
    expected = 10 * np.log10(1.0 / np.mean((c0 - t0) ** 2))
    assert records[0]["psnr_copy_last"] == pytest.approx(expected, rel=1e-4)


def test_trajectory_error_counts_missing_glyph_as_diagonal(clips):
    tru = clips[0].frames[9:]
    err = trajectory_error(centroid_track(tru), np.zeros_like(tru), frame_diag=90.0)
    assert err == pytest.approx(90.0)


class _IdentityVideo:
    """Encodes frames as themselves: decode(encode(x)) == x (a perfect tokenizer)."""

    def encode(self, x):
        return x

    def decode(self, x):
        return from_uint8(x)


class _IdentityAudio:
    def encode(self, w, num_quantizers=None):
        return w

    def decode(self, c):
        return c


class _Bundle:
    video, audio, num_audio_levels = _IdentityVideo(), _IdentityAudio(), 2


def test_tokenizer_reconstruction_perfect_and_baselines(clips):
    metrics = {m.name: m for m in tokenizer_reconstruction(_Bundle(), clips[:3], batch_size=2)}
    assert set(metrics) == {"tokenizer/video_psnr", "tokenizer/video_ssim", "tokenizer/audio_si_snr"}
    assert metrics["tokenizer/video_psnr"].value > 100
    assert metrics["tokenizer/video_ssim"].value == pytest.approx(1.0, abs=1e-4)
    assert metrics["tokenizer/audio_si_snr"].value > 60
    assert metrics["tokenizer/audio_si_snr"].baseline < 5  # another clip's audio
    assert 5 < metrics["tokenizer/video_psnr"].baseline < 40  # blank frames: the glyph is missing


def test_tokenizer_reconstruction_ceiling_of_a_perfect_tokenizer_is_the_probe_on_ground_truth(clips, probe):
    metrics = {m.name: m for m in tokenizer_reconstruction(_Bundle(), clips[:4], batch_size=2, probe=probe)}
    for key in ("digit", "color", "direction", "pitch"):
        m = metrics[f"tokenizer_recon/{key}_accuracy"]
        assert m.n == 4 and m.value == pytest.approx(m.reference)   # identity reconstructions read as the originals
        assert m.baseline < 0.2
    assert metrics["tokenizer_recon/click_f1"].value == pytest.approx(metrics["tokenizer_recon/click_f1"].reference)


def test_digit_labels_and_prompts(corpus):
    labels = digit_labels(corpus)
    truth = load_ground_truth(corpus)
    assert labels == {cid: r["digit"] for cid, r in truth.items()} and len(labels) == 12
    assert digit_prompts()[7] == "a video of the digit seven" and len(digit_prompts()) == 10
    assert digit_prompts("{}!", ["a", "b"]) == ["a!", "b!"]
    with pytest.raises(ValueError):
        digit_prompts("no slot")


def test_probe_labels_are_class_indices_of_every_clip(corpus):
    labels = probe_labels(corpus)
    truth = load_ground_truth(corpus)
    assert set(labels) == set(PROBE_LABELS) == {"digit", "color", "direction", "pitch"}
    assert PROBE_LABELS["pitch"] == "audio" and PROBE_LABELS["direction"] == "video"
    for cid, r in truth.items():
        assert labels["digit"][cid] == r["digit"] and list(COLORS)[labels["color"][cid]] == r["color"]
        assert list(DIRECTIONS)[labels["direction"][cid]] == r["direction"]
        assert TONE_HZ[labels["pitch"][cid]] == r["tone_hz"] and labels["pitch"][cid] == r["digit"]
