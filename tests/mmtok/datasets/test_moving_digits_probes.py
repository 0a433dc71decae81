"""The Moving-Digits probes read digit, colour, direction, pitch and clicks back from real corpus clips."""

import numpy as np
import pytest

from mmtok.data.media import read_audio, read_video
from mmtok.datasets.moving_digits.corpus import digit_frequency, generate_corpus, load_ground_truth
from mmtok.datasets.moving_digits.probes import MovingDigitsProbe, click_f1, read_clicks, read_pitch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    generate_corpus(out, num_clips=24, seed=3, num_workers=0, progress=False)
    return out, load_ground_truth(out)


@pytest.mark.slow
def test_probe_reads_ground_truth_clips(corpus):
    out, truth = corpus
    probe = MovingDigitsProbe(renders_per_glyph=1)
    scores = {"digit": 0, "color": 0, "direction": 0, "pitch": 0}
    f1 = []
    for cid, r in truth.items():
        path = out / "clips" / f"{cid}.mp4"
        video = probe.read_video(np.asarray(read_video(path)))
        audio = probe.read_audio(np.asarray(read_audio(path, sample_rate=16000)))
        scores["digit"] += video.digit == r["digit"]
        scores["color"] += video.color == r["color"]
        scores["direction"] += video.direction == r["direction"]
        scores["pitch"] += audio.digit == r["digit"]
        f1.append(click_f1(audio.click_times, r["bounce_times"], tolerance=1 / 8))
        np.testing.assert_allclose(video.track, np.asarray(r["centroids"]), atol=1.0)
    n = len(truth)
    assert scores["digit"] / n >= 0.9
    assert scores["color"] / n == 1.0
    assert scores["direction"] / n >= 0.95
    assert scores["pitch"] / n == 1.0
    assert np.mean(f1) >= 0.9


def struck_tone(hz: float, strikes: list[float], seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    """A tone struck at each time in ``strikes``: jumps back to full level, then decays (as the corpus renders)."""
    t = np.arange(int(seconds * sr)) / sr
    since = np.full_like(t, np.inf)
    for s in strikes:
        since = np.where(t >= s, t - s, since)
    return 0.5 * np.exp(-since / 0.15) * np.sin(2 * np.pi * hz * t)


def test_pitch_and_clicks_on_synthetic_audio():
    sr = 16000
    wave = struck_tone(digit_frequency(6), [0.0, 0.5, 1.25])
    digit, hz = read_pitch(wave, sr)
    assert digit == 6 and abs(hz - digit_frequency(6)) < 5
    clicks = read_clicks(wave, sr)       # the strike at 0 opens the clip: not a bounce
    assert len(clicks) == 2 and abs(clicks[0] - 0.5) < 0.02 and abs(clicks[1] - 1.25) < 0.02
    steady = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)
    assert read_clicks(steady, sr) == []
    assert read_clicks(struck_tone(440.0, [0.0]), sr) == []           # a decaying tone alone has no onset


def test_click_f1():
    assert click_f1([], [], 0.1) == 1.0
    assert click_f1([0.5], [], 0.1) == 0.0
    assert click_f1([0.52, 1.0], [0.5], 0.1) == pytest.approx(2 / 3)
    assert click_f1([0.5, 0.51], [0.5], 0.1) == pytest.approx(2 / 3)  # one true event matches once


def test_probe_rejects_bad_frames():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        MovingDigitsProbe().read_video(np.zeros((4, 8, 8), np.uint8)[..., None].repeat(2, -1))
