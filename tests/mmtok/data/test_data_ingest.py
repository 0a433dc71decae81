"""Ingestion: manifests and folders -> decoded clips; bad files skipped, counted and reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmtok.data.ingest import (
    BadFileReport,
    ClipConfig,
    ManifestError,
    iter_clips,
    load_clip,
    load_records,
    read_manifest,
    scan_folder,
)
from mmtok.data.media import MediaError, write_audio, write_video

SR = 16000


def frames(t, h=48, w=64, level=None):
    return np.stack([np.full((h, w, 3), 12 * i if level is None else level, np.uint8) for i in range(t)])


def tone(seconds, freq=440.0):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    write_video(root / "good.mp4", frames(20), 8, audio=tone(2.5), sample_rate=SR)
    write_video(root / "silent.mp4", frames(20), 8)
    write_video(root / "odd.mp4", frames(14, 37, 51), 6, audio=tone(2.0), sample_rate=SR)
    write_video(root / "vfr.mp4", frames(6), 8, timestamps=[0, 0.1, 0.3, 0.35, 0.9, 1.0])
    write_audio(root / "voice.wav", tone(3.0, 300), SR)
    (root / "good.txt").write_text("first caption\nsecond caption\n")
    data = (root / "good.mp4").read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "empty.mp4").write_bytes(b"")
    (root / "bad" / "text.mp4").write_text("hello, not a video\n")
    (root / "bad" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return root


def write_manifest(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_manifest_parsing(media, tmp_path):
    m = write_manifest(media / "m.jsonl", [
        {"id": "a", "video": "good.mp4", "caption": "c1", "captions": ["c2", "c1"], "split": "train", "x": 1},
        "# a comment", "",
        {"id": "b", "video": "silent.mp4", "audio": "voice.wav", "start": 0.5, "end": 2.0, "split": "test"},
        {"id": 3, "audio": str(media / "voice.wav")},
    ])
    recs = read_manifest(m)
    assert [r.id for r in recs] == ["a", "b", "3"]
    assert recs[0].captions == ["c1", "c2"] and recs[0].meta == {"x": 1} and recs[0].video == media / "good.mp4"
    assert recs[1].audio == media / "voice.wav" and (recs[1].start, recs[1].end) == (0.5, 2.0)
    assert recs[2].video is None and recs[2].audio == media / "voice.wav"
    assert [r.id for r in read_manifest(m, split="test")] == ["b"]
    assert [r.id for r in load_records(m, split=["train", "test"])] == ["a", "b"]


@pytest.mark.parametrize("line,match", [
    ("{not json", "invalid JSON"),
    (json.dumps({"video": "a.mp4"}), "missing or empty 'id'"),
    (json.dumps({"id": "x"}), "neither 'video' nor 'audio'"),
    (json.dumps({"id": "x", "video": "a.mp4", "captions": [1]}), "list of strings"),
    (json.dumps({"id": "x", "video": "a.mp4", "start": 3, "end": 1}), "start < end"),
    ("[1, 2]", "JSON object"),
])
def test_manifest_errors_name_the_line(tmp_path, line, match):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "ok", "video": "a.mp4"}, line])
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(m)
    assert "m.jsonl:2" in str(info.value)


def test_manifest_duplicate_and_missing(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "video": "x.mp4"}, {"id": "a", "video": "y.mp4"}])
    with pytest.raises(ManifestError, match="duplicate id 'a'.*line 1"):
        read_manifest(m)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_folder_scan_with_sidecar_captions(media):
    recs = {r.id: r for r in scan_folder(media)}
    assert {"good", "silent", "odd", "vfr", "voice", "bad/empty", "bad/text", "bad/truncated"} <= set(recs)
    assert recs["good"].caption_file == media / "good.txt" and recs["silent"].caption_file is None
    clip = load_clip(recs["good"], ClipConfig(fps=8, num_frames=9, size=32, sample_rate=None))
    assert clip.captions == ["first caption", "second caption"]
    assert recs["voice"].video is None and recs["voice"].audio is not None
    assert [r.id for r in load_records(media)] == [r.id for r in scan_folder(media)]


def test_load_clip_video_with_own_audio(media):
    rec = next(r for r in scan_folder(media) if r.id == "good")
    clip = load_clip(rec, ClipConfig(fps=8, num_frames=9, size=32, sample_rate=SR))
    assert clip.frames.shape == (9, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (9 * SR // 8,) and clip.audio.dtype == np.float32
    np.testing.assert_allclose(clip.audio, tone(2.5)[: 9 * SR // 8], atol=1e-3)


def test_start_end_and_separate_audio(media, tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [
        {"id": "b", "video": str(media / "silent.mp4"), "audio": str(media / "voice.wav"), "start": 0.5}])
    clip = load_clip(read_manifest(m)[0], ClipConfig(fps=8, num_frames=8, size=None, sample_rate=SR))
    assert [int(round(f.mean() / 12)) for f in clip.frames] == list(range(4, 12))
    np.testing.assert_allclose(clip.audio, tone(3.0, 300)[SR // 2: SR // 2 + SR], atol=1e-3)


def test_video_without_audio_odd_size_and_vfr(media):
    recs = {r.id: r for r in scan_folder(media)}
    silent = load_clip(recs["silent"], ClipConfig(num_frames=17, size=64))
    assert silent.audio is None and silent.frames.shape == (17, 64, 64, 3)
    with pytest.raises(MediaError, match="no audio stream"):
        load_clip(recs["silent"], ClipConfig(num_frames=17, require_audio=True))
    odd = load_clip(recs["odd"], ClipConfig(fps=6, num_frames=12, size=16))
    assert odd.frames.shape == (12, 16, 16, 3) and odd.audio.shape == (2 * SR,)
    vfr = load_clip(recs["vfr"], ClipConfig(fps=10, num_frames=11, size=None, sample_rate=None))
    assert [int(round(f.mean() / 12)) for f in vfr.frames] == [0, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5]
    audio_only = load_clip(recs["voice"], ClipConfig(sample_rate=8000))
    assert audio_only.frames is None and audio_only.audio.shape == (24000,)


def test_bad_files_are_skipped_counted_and_reported(media, tmp_path):
    recs = scan_folder(media)
    report = BadFileReport()
    cfg = ClipConfig(fps=8, num_frames=17, size=32, sample_rate=SR)
    clips = list(iter_clips(recs, cfg, report=report))
    bad = {e["id"]: e for e in report.entries}
    # three broken files plus vfr.mp4, which holds only ~1.1 s (fewer than 17 frames at 8 fps)
    assert set(bad) == {"bad/empty", "bad/text", "bad/truncated", "vfr"}
    assert "empty" in bad["bad/empty"]["reason"] and "too short" in bad["vfr"]["reason"]
    assert bad["bad/text"]["file"].endswith("text.mp4")
    assert {c.id for c in clips} == {r.id for r in recs} - set(bad)
    assert report.total == len(recs) and len(report) == 4
    assert "skipped 4 of" in report.summary()
    path = report.write(tmp_path / "bad_files.json")
    again = BadFileReport.read(path)
    assert len(again) == 4 and again.total == report.total
    assert json.loads(path.read_text())["reasons"]["empty file"] == 1


def test_parallel_decoding_matches_serial(media):
    recs = scan_folder(media)
    cfg = ClipConfig(fps=8, num_frames=9, size=32, sample_rate=SR)
    serial = list(iter_clips(recs, cfg))
    parallel = list(iter_clips(recs, cfg, num_workers=2))
    assert [c.id for c in serial] == [c.id for c in parallel]
    for a, b in zip(serial, parallel):
        assert np.array_equal(a.frames, b.frames) if a.frames is not None else b.frames is None


def test_bad_caption_files_and_dangling_links_are_bad_files(media, tmp_path):
    """A non-UTF-8 or unreadable sidecar, or a dangling symlink, makes its record a counted bad file; the scan and
    the other records go on."""
    import os
    import shutil

    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(media / "good.mp4", folder / f"{name}.mp4")
    (folder / "a.txt").write_text("a fine caption\n")
    (folder / "b.txt").write_bytes(b"caf\xe9 au lait\n")          # Latin-1, not UTF-8
    (folder / "c.txt").mkdir()                                     # exists but cannot be read as a file
    os.symlink(folder / "gone.mp4", folder / "d.mp4")              # dangling
    recs = scan_folder(folder)
    assert [r.id for r in recs] == ["a", "b", "c", "d"]
    report = BadFileReport()
    clips = list(iter_clips(recs, ClipConfig(fps=8, num_frames=9, size=32, sample_rate=None), report=report))
    assert [c.id for c in clips] == ["a"] and clips[0].captions == ["a fine caption"]
    bad = {e["id"]: e for e in report.entries}
    assert set(bad) == {"b", "c", "d"} and report.total == 4
    assert "not UTF-8" in bad["b"]["reason"] and bad["b"]["file"].endswith("b.txt")
    assert "unreadable" in bad["c"]["reason"] and bad["c"]["file"].endswith("c.txt")
    assert bad["d"]["file"].endswith("d.mp4")


def test_manifest_with_a_non_utf8_byte_names_file_and_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(json.dumps({"id": "a", "video": "a.mp4"}).encode() + b"\n" + b'{"id": "b\xff", "video": "b.mp4"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not UTF-8 \(byte 0xff at column 10\)"):
        read_manifest(m)
