"""Moving-Digits corpus: determinism, ground truth matching the decoded media, splits, captions, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmtok.data.media import probe, read_audio, read_video
from mmtok.datasets.moving_digits.corpus import (
    COLORS,
    DIGIT_WORDS,
    GROUND_TRUTH_FIELDS,
    MANIFEST_FIELDS,
    HELD_OUT_TEMPLATES,
    CorpusConfig,
    digit_frequency,
    generate_corpus,
    held_out_caption,
    load_ground_truth,
)

REPO = Path(__file__).resolve().parents[3]
META_FILES = ("manifest.jsonl", "ground_truth.jsonl", "splits.json", "corpus.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    generate_corpus(out, num_clips=40, seed=3, num_workers=0, progress=False)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_layout_and_fields(corpus):
    manifest = read_jsonl(corpus / "manifest.jsonl")
    truth = read_jsonl(corpus / "ground_truth.jsonl")
    assert len(manifest) == len(truth) == 40
    assert all(set(r) == set(MANIFEST_FIELDS) for r in manifest)
    assert all(set(r) == set(GROUND_TRUTH_FIELDS) for r in truth)
    assert [r["id"] for r in manifest] == [r["id"] for r in truth]
    for r in manifest:
        info = probe(corpus / r["video"])
        assert (info.width, info.height, info.fps, info.num_frames) == (32, 32, 8.0, 9)
        assert info.sample_rate == 16000 and info.channels == 1


def test_same_seed_is_byte_identical_across_worker_counts(corpus, tmp_path):
    generate_corpus(tmp_path / "a", num_clips=40, seed=3, num_workers=2, progress=False)
    for name in META_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (corpus / name).read_bytes(), name
    generate_corpus(tmp_path / "b", num_clips=40, seed=4, num_workers=0, progress=False)
    assert (tmp_path / "b" / "ground_truth.jsonl").read_bytes() != (corpus / "ground_truth.jsonl").read_bytes()


def test_glyph_sits_where_ground_truth_says(corpus):
    truth = load_ground_truth(corpus)
    for gt in list(truth.values())[:8]:
        frames = read_video(corpus / "clips" / f"{gt['id']}.mp4").astype(np.float64)
        assert frames.shape == (9, 32, 32, 3)
        ink = frames.sum(-1)                                              # [T, H, W], background is black
        ys, xs = np.mgrid[0:32, 0:32] + 0.5
        for t in range(9):
            w = np.where(ink[t] > 60, ink[t], 0.0)
            cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
            assert abs(cx - gt["centroids"][t][0]) < 1.0 and abs(cy - gt["centroids"][t][1]) < 1.0
            x0, y0 = gt["boxes"][t]
            g = gt["glyph_size"]
            outside = ink[t].copy()
            outside[max(0, y0 - 1):y0 + g + 1, max(0, x0 - 1):x0 + g + 1] = 0
            assert outside.max() < 60  # nothing drawn outside the glyph box
        # the glyph's brightest pixels are nearest to the ground-truth colour of the palette (4:2:0 chroma
        # subsampling blurs colour at the glyph's edges, so exact values are not expected)
        strong = frames[ink > np.percentile(ink, 99.5)].mean(0)
        nearest = min(COLORS, key=lambda c: np.abs(np.asarray(COLORS[c]) - strong).sum())
        assert nearest == gt["color"]
        np.testing.assert_allclose(strong, gt["color_rgb"], atol=100)


def test_bounces_follow_the_trajectory(corpus):
    for gt in load_ground_truth(corpus).values():
        boxes = np.array(gt["boxes"], float)
        step = np.diff(boxes, axis=0)                                     # [T-1, 2]
        flips = [k + 1 for k in range(1, len(step))
                 if np.any(np.sign(step[k]) * np.sign(step[k - 1]) < 0)]
        # every visible direction reversal is a recorded bounce (a bounce can also hide inside one step)
        assert set(flips) <= set(gt["bounce_frames"]) | {f + 1 for f in gt["bounce_frames"]}
        assert boxes.min() >= 0 and boxes.max() <= 32 - gt["glyph_size"]
        assert gt["bounce_times"] == [k / 8 for k in gt["bounce_frames"]]


def test_audio_pitch_and_strikes(corpus):
    truth = load_ground_truth(corpus)
    with_bounce = [g for g in truth.values() if g["bounce_frames"]][:4]
    assert with_bounce
    for gt in with_bounce:
        audio = read_audio(corpus / "clips" / f"{gt['id']}.mp4", sample_rate=16000)
        assert audio.shape == (18000,)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        peak = np.argmax(spectrum) * 16000 / len(audio)
        assert abs(peak - digit_frequency(gt["digit"])) < 3
        # the strike: the tone's envelope (20 ms RMS) jumps right after each bounce time, having decayed before it
        rms = np.sqrt(np.convolve(audio ** 2, np.ones(320) / 320, mode="same"))
        for k in gt["bounce_frames"]:
            s = int(k / 8 * 16000)
            assert rms[s + 240:s + 400].max() > 1.3 * rms[s - 400:s - 240].max(), (gt["id"], k)


def test_first_moves_are_clear_of_the_edges(corpus):
    # a bounce on the first step would show the opposite of the captioned direction
    for gt in load_ground_truth(corpus).values():
        assert all(k > CorpusConfig().clear_steps for k in gt["bounce_frames"]), gt["bounce_frames"]
        dx, dy = np.subtract(gt["boxes"][2], gt["boxes"][0])
        vx, vy = gt["velocity"]
        assert np.sign(round(dx)) == np.sign(round(vx, 3)) or abs(dx) <= 1
        assert np.sign(round(dy)) == np.sign(round(vy, 3)) or abs(dy) <= 1


def test_splits_and_held_out_combinations(corpus):
    splits = json.loads((corpus / "splits.json").read_text())
    truth = load_ground_truth(corpus)
    ids = splits["train"] + splits["validation"] + splits["test"]
    assert sorted(ids) == sorted(truth) and len(set(ids)) == len(ids)
    held = {tuple(c) for c in splits["held_out_combinations"]}
    held_validation = {tuple(c) for c in splits["held_out_validation_combinations"]}
    assert len(held) == round(0.05 * 10 * len(COLORS) * 8)
    assert not held & held_validation
    for gt in truth.values():
        combo = (gt["digit"], gt["color"], gt["direction"])
        assert gt["held_out"] == (combo in held or combo in held_validation)
        if combo in held:
            assert gt["split"] == "test" and gt["id"] in splits["held_out_test"]
        if combo in held_validation:
            assert gt["split"] == "validation" and gt["id"] in splits["held_out_validation"]


def test_held_out_combinations_absent_from_train_at_scale():
    from mmtok.datasets.moving_digits.corpus import sample_clip_specs

    specs, held = sample_clip_specs(CorpusConfig(num_clips=2000, seed=0))
    train = {(s.digit, s.color, s.direction) for s in specs if s.split == "train"}
    held_validation = {(s.digit, s.color, s.direction) for s in specs if s.held_out and s.split == "validation"}
    assert held and not (train & set(held))
    assert len(held_validation) == len(held) and not (train & held_validation) and not (held_validation & set(held))
    assert any(s.held_out and s.split == "test" for s in specs)
    # each test clip of a validation-only combination would contradict it
    assert not any(s.split == "test" and (s.digit, s.color, s.direction) in held_validation for s in specs)
    # each held-out combination's parts are all seen in training
    for d, c, m in held:
        assert any(t[0] == d for t in train) and any(t[1] == c for t in train) and any(t[2] == m for t in train)


def test_captions_name_digit_color_and_vary(corpus):
    manifest = read_jsonl(corpus / "manifest.jsonl")
    truth = load_ground_truth(corpus)
    for r in manifest:
        gt = truth[r["id"]]
        assert r["caption"] == r["captions"][0] and len(set(r["captions"])) == 3
        for cap in r["captions"]:
            low = cap.lower()
            assert gt["color"] in low
            assert DIGIT_WORDS[gt["digit"]] in low or str(gt["digit"]) in low
    assert len({r["caption"].split()[1] for r in manifest}) > 3  # phrasing varies


def test_partial_captions_name_part_of_the_content_of_training_clips_only():
    from mmtok.datasets.moving_digits.corpus import _DIRECTION_PHRASES, _TEMPLATES, PARTIAL_TEMPLATES, sample_clip_specs

    plain, _ = sample_clip_specs(CorpusConfig(num_clips=300, seed=1))
    specs, _ = sample_clip_specs(CorpusConfig(num_clips=300, seed=1, partial_captions=2))
    for a, b in zip(plain, specs):
        assert (a.boxes, a.digit, a.color, a.direction, a.split) == (b.boxes, b.digit, b.color, b.direction, b.split)
        if b.split != "train":
            assert b.captions == a.captions  # evaluation prompts stay full captions
            continue
        assert b.captions[:3] == a.captions and len(b.captions) == 5 and len(set(b.captions)) == 5
        for cap in b.captions[3:]:
            low = cap.lower()
            tokens = re.findall(r"[a-z0-9-]+", low)
            named = (DIGIT_WORDS[b.digit] in tokens or str(b.digit) in tokens,
                     b.color in low, b.direction in low or _DIRECTION_PHRASES[b.direction] in low)
            assert 1 <= sum(named) <= 2, cap  # part of the content, never all of it
    assert not set(PARTIAL_TEMPLATES) & (set(_TEMPLATES) | set(HELD_OUT_TEMPLATES))
    with pytest.raises(ValueError, match="partial_captions"):
        CorpusConfig(partial_captions=len(PARTIAL_TEMPLATES) + 1)


def test_config_validation():
    with pytest.raises(ValueError, match="glyph_size"):
        CorpusConfig(size=16, glyph_size=20)
    with pytest.raises(ValueError, match="even"):
        CorpusConfig(size=63)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    subprocess.run([sys.executable, str(REPO / "data" / "moving_digits.py"), "--out", str(out), "--num-clips", "6",
                    "--size", "32", "--workers", "0"], check=True, capture_output=True,
                   env={"MMTOK_PROGRESS": "0", "PATH": "/usr/bin:/bin"})
    assert len(read_jsonl(out / "manifest.jsonl")) == 6
    assert read_video(out / "clips" / "md00000.mp4").shape == (9, 32, 32, 3)


def test_held_out_phrasings_never_match_training_captions(corpus):
    manifest = read_jsonl(corpus / "manifest.jsonl")
    seen = {c for r in manifest for c in r["captions"]}
    truth = load_ground_truth(corpus)
    for i, r in enumerate(manifest):
        gt = truth[r["id"]]
        for k in range(len(HELD_OUT_TEMPLATES)):
            caption = held_out_caption(gt["digit"], gt["color"], gt["direction"], i + k)
            assert caption not in seen
            assert gt["color"] in caption.lower()
            assert DIGIT_WORDS[gt["digit"]] in caption.lower() or str(gt["digit"]) in caption
    # no held-out template is a training template (so no content fills it into a training caption)
    from mmtok.datasets.moving_digits.corpus import _TEMPLATES
    assert not set(HELD_OUT_TEMPLATES) & set(_TEMPLATES)


def test_glyphs_per_digit_limits_the_hands():
    from mmtok.datasets.moving_digits.corpus import _load_glyphs, sample_clip_specs, typical_glyphs

    specs, _ = sample_clip_specs(CorpusConfig(num_clips=300, seed=0, glyphs_per_digit=1))
    hands = {}
    for s in specs:
        hands.setdefault(s.digit, set()).add(s.glyph_sample_index)
    images, targets = _load_glyphs()
    assert hands == {d: {int(typical_glyphs(images, targets, d)[0])} for d in range(10)}
    # the most typical hand is nearer its digit's mean image than the average hand is
    for d in range(10):
        order = typical_glyphs(images, targets, d)
        assert sorted(order.tolist()) == np.flatnonzero(targets == d).tolist()
        mean = images[order].mean(0)
        dist = ((images[order] - mean) ** 2).sum((1, 2))
        assert dist[0] == dist.min() and dist[0] < dist.mean()
    every, _ = sample_clip_specs(CorpusConfig(num_clips=300, seed=0))
    assert len({s.glyph_sample_index for s in every}) > 100
    with pytest.raises(ValueError, match="glyphs_per_digit"):
        CorpusConfig(glyphs_per_digit=0)


def test_position_grid_keeps_every_second_frame_on_the_grid():
    from mmtok.datasets.moving_digits.corpus import DIRECTIONS, sample_clip_specs

    cfg = CorpusConfig(num_clips=200, seed=1, position_grid=8)
    specs, _ = sample_clip_specs(cfg)
    assert {s.direction for s in specs} == set(DIRECTIONS)
    for s in specs:
        ux, uy = DIRECTIONS[s.direction]
        assert s.velocity == (np.sign(round(ux, 6)) * 4.0, np.sign(round(uy, 6)) * 4.0)
        assert s.speed == pytest.approx(np.hypot(*s.velocity))
        boxes = np.array(s.boxes)
        assert (boxes[::2] % 8 == 0).all() and (boxes % 4 == 0).all(), (s.id, s.boxes)
        assert boxes.min() >= 0 and boxes.max() <= 16
        assert all(k > cfg.clear_steps for k in s.bounce_frames), (s.id, s.boxes)
        step = np.diff(boxes, axis=0)
        assert (np.abs(step) == np.abs(np.array(s.velocity))).all()      # the same speed through bounces
    # without a grid, starts and speeds are continuous
    free, _ = sample_clip_specs(CorpusConfig(num_clips=50, seed=1))
    assert any((np.array(s.boxes) % 4 != 0).any() for s in free)
    with pytest.raises(ValueError, match="position_grid"):
        CorpusConfig(position_grid=6)             # does not divide 32 - 16
    with pytest.raises(ValueError, match="position_grid"):
        CorpusConfig(size=34, glyph_size=16, position_grid=3)


def test_whole_grid_steps_put_every_frame_on_the_grid():
    from mmtok.datasets.moving_digits.corpus import DIRECTIONS, sample_clip_specs

    cfg = CorpusConfig(num_clips=200, seed=2, num_frames=5, fps=4, position_grid=8, frames_per_grid_step=1,
                       clear_steps=1)
    specs, _ = sample_clip_specs(cfg)
    assert {s.direction for s in specs} == set(DIRECTIONS)
    starts = set()
    for s in specs:
        ux, uy = DIRECTIONS[s.direction]
        assert s.velocity == (np.sign(round(ux, 6)) * 8.0, np.sign(round(uy, 6)) * 8.0)
        boxes = np.array(s.boxes)
        assert (boxes % 8 == 0).all() and boxes.min() >= 0 and boxes.max() <= 16, (s.id, s.boxes)
        assert (np.abs(np.diff(boxes, axis=0)) == np.abs(np.array(s.velocity))).all()
        assert all(k > cfg.clear_steps for k in s.bounce_frames), (s.id, s.boxes)
        # the first move is the one the captions name (no bounce on it)
        np.testing.assert_array_equal(boxes[1] - boxes[0], np.array(s.velocity))
        starts.add(tuple(s.boxes[0]))
    assert len(starts) == 9                     # every grid point starts some clip
    with pytest.raises(ValueError, match="frames_per_grid_step"):
        CorpusConfig(position_grid=8, frames_per_grid_step=3)
    with pytest.raises(ValueError, match="clear_steps"):
        CorpusConfig(clear_steps=-1)


def test_lossless_clips_repeat_identical_content_exactly(tmp_path):
    # With crf 0 a clip's frames do not depend on the rest of the clip (x264's lookahead tunes a lossy I-frame
    # to the frames after it) nor on where the glyph sits (4:2:0 chroma would blur colours differently at the frame's
    # edges), so the same glyph decodes to the same pixels in every clip, moved with its box.
    generate_corpus(tmp_path, num_clips=60, seed=0, num_workers=0, progress=False, position_grid=8,
                    glyphs_per_digit=1, crf=0)
    truth = load_ground_truth(tmp_path)
    seen = {}
    pairs = moved = 0
    for gt in truth.values():
        key = (gt["digit"], gt["color"])
        x, y = gt["boxes"][0]
        first = read_video(tmp_path / "clips" / f"{gt['id']}.mp4")[0]
        canonical = np.roll(first, (-y, -x), axis=(0, 1))             # the glyph box moved to the top-left corner
        if key in seen:
            np.testing.assert_array_equal(canonical, seen[key][0])
            pairs += 1
            moved += seen[key][1] != (x, y)
        seen[key] = canonical, (x, y)
    assert pairs > 0 and moved > 0
