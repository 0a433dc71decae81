"""recipes/tokenize_dataset.py: shards, bad-file report, determinism across worker counts, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "mmtok" / "data"
sys.path.insert(0, str(FAKES))

from datafakes import make_bundle  # noqa: E402

from mmtok.data.media import write_video  # noqa: E402
from mmtok.data.shards import load_token_dataset, read_dataset_info, row_codes  # noqa: E402
from mmtok.datasets.moving_digits import generate_corpus, load_ground_truth  # noqa: E402
from recipes.tokenize_dataset import TokenizeConfig, main, run  # noqa: E402

BAD = {"bad_empty", "bad_text", "bad_truncated", "missing"}


@pytest.fixture(scope="module", autouse=True)
def fake_tokenizers_known_to_workers():
    """Bundles name their classes and loading resolves names through mmtok's registry only: the spawned workers and
    the recipe subprocesses learn the fakes from this variable (what a user sets for their own tokenizer module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMTOK_TOKENIZER_MODULES", "datafakes")
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 Moving-Digits clips (32x32) plus bad files and a silent video appended to the manifest."""
    root = tmp_path_factory.mktemp("tok")
    manifest = generate_corpus(root / "md", num_clips=10, seed=2, size=32, num_frames=17, num_workers=0,
                               progress=False)
    bad = root / "md" / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video at all\n")
    data = (root / "md" / "clips" / "md00000.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(bad / "silent.mp4", torch.zeros(17, 32, 32, 3, dtype=torch.uint8), 8)
    extra = [{"id": "bad_empty", "video": "bad/empty.mp4", "caption": "x", "split": "train"},
             {"id": "bad_text", "video": "bad/text.mp4", "caption": "x", "split": "train"},
             {"id": "silent", "video": "bad/silent.mp4", "caption": "nothing moves", "split": "train"},
             {"id": "bad_truncated", "video": "bad/truncated.mp4", "caption": "x", "split": "test"},
             {"id": "missing", "video": "bad/missing.mp4", "caption": "x", "split": "train"}]
    with open(manifest, "a") as f:
        for r in extra:
            f.write(json.dumps(r) + "\n")
    make_bundle(root / "bundle")
    make_bundle(root / "slow_bundle", delay=1.0)
    return root


def cfg_for(corpus, out, **kw):
    base = dict(data=str(corpus / "md" / "manifest.jsonl"), tokenizer=str(corpus / "bundle"), out=str(out),
                shard_size=4, num_workers=0, size=32)
    base.update(kw)
    return TokenizeConfig(**base)


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "shards").iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "tokens"
    run(cfg_for(corpus, out))
    return out


def test_rows_codes_and_bad_file_report(corpus, reference):
    info = read_dataset_info(reference)
    assert info["num_records"] == 15 and info["num_rows"] == 11 and info["num_skipped"] == 4
    assert info["latent_hw"] == [2, 2] and len(info["shards"]) == 4
    ds = load_token_dataset(reference)
    assert len(ds) == 11
    rows = {r["id"]: r for r in ds}
    assert set(rows) == {f"md{i:05d}" for i in range(10)} | {"silent"}
    truth = load_ground_truth(corpus / "md")
    for rid, gt in truth.items():
        codes = row_codes(rows[rid])
        assert codes["video"].shape == (5, 2, 2) and codes["video"].dtype == torch.long
        assert codes["audio"].shape == (2, 107)                     # ceil(34000 / 320) frames, 2 levels
        assert rows[rid]["num_frames"] == 17 and rows[rid]["num_samples"] == 34000
        assert len(rows[rid]["text_ids"]) == len(rows[rid]["captions"]) == 3
        assert rows[rid]["text_ids"][0] == [ord(c) % 128 for c in rows[rid]["captions"][0]]
        assert rows[rid]["split"] == gt["split"]
    assert rows["silent"]["audio_shape"] == [] and rows["silent"]["video_shape"] == [5, 2, 2]
    bad = json.loads((reference / "bad_files.json").read_text())
    assert bad["total"] == 15 and bad["skipped"] == 4
    assert {e["id"] for e in bad["files"]} == BAD
    reasons = {e["id"]: e["reason"] for e in bad["files"]}
    assert "empty" in reasons["bad_empty"] and "not found" in reasons["missing"]
    assert "not a readable media" in reasons["bad_text"]
    # split filter and streaming give the same rows
    assert sorted(load_token_dataset(reference, split="train")["id"]) == \
        sorted(r for r, g in rows.items() if g["split"] == "train")
    assert [r["id"] for r in load_token_dataset(reference, streaming=True)] == list(ds["id"])


def test_parallel_run_is_byte_identical(corpus, reference, tmp_path):
    out = run(cfg_for(corpus, tmp_path / "par", num_workers=2))
    assert shard_bytes(out) == shard_bytes(reference)
    assert (out / "bad_files.json").read_text() == (reference / "bad_files.json").read_text()


def test_rerun_is_a_no_op_and_other_settings_are_refused(corpus, reference, tmp_path, capsys):
    out = tmp_path / "again"
    run(cfg_for(corpus, out))
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    run(cfg_for(corpus, out))
    assert "4 shards already done, 0 to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    with pytest.raises(SystemExit, match="different tokenization job.*clip"):
        run(cfg_for(corpus, out, size=16))
    run(cfg_for(corpus, out, size=16, overwrite=True))
    assert read_dataset_info(out)["clip"]["size"] == 16


def test_unfinished_dataset_is_refused_by_the_reader(tmp_path):
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_token_dataset(tmp_path)


def test_cli_with_yaml_and_overrides(corpus, tmp_path):
    yaml = tmp_path / "t.yaml"
    yaml.write_text(f"data: {corpus / 'md' / 'manifest.jsonl'}\ntokenizer: {corpus / 'bundle'}\nnum_workers: 0\n"
                    "size: 32\nshard_size: 8\n")
    out = main(["--config", str(yaml), f"out={tmp_path / 'cli'}", "split=validation", "limit=20"])
    info = read_dataset_info(out)
    gt = load_ground_truth(corpus / "md")
    assert info["num_rows"] == sum(g["split"] == "validation" for g in gt.values())


def start_slow_run(corpus, out) -> subprocess.Popen:
    """``recipes/tokenize_dataset.py`` as a script, one worker, the slow bundle, in a process group of its own."""
    env = {**os.environ, "PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}", "MMTOK_PROGRESS": "0"}
    cmd = [sys.executable, str(REPO / "recipes" / "tokenize_dataset.py"),
           f"data={corpus / 'md' / 'manifest.jsonl'}", f"tokenizer={corpus / 'slow_bundle'}", f"out={out}",
           "shard_size=4", "num_workers=1", "size=32"]
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_and_resume_equals_uninterrupted(corpus, reference, tmp_path):
    """Kill a run (SIGKILL to its process group) after its first shard, resume it, compare with the reference."""
    out = tmp_path / "killed"
    proc = start_slow_run(corpus, out)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / "shards").glob("shard-*.arrow")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = sorted(p.name for p in (out / "shards").glob("shard-*.arrow"))
    assert 1 <= len(done) < 4 and not (out / "dataset.json").exists()
    # resume in this process (same job, same bundle: the plan matches)
    run(cfg_for(corpus, out, tokenizer=str(corpus / "slow_bundle"), num_workers=0))
    assert shard_bytes(out) == shard_bytes(reference)
    ds = load_token_dataset(out)
    assert sorted(ds["id"]) == sorted(load_token_dataset(reference)["id"])   # no duplicates, no gaps


def _worker_pids(parent: int) -> list[int]:
    """The multiprocessing workers (spawned children) of process ``parent``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_killed_worker_fails_the_run_instead_of_hanging(corpus, tmp_path):
    out = tmp_path / "worker_killed"
    proc = start_slow_run(corpus, out)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None and not workers:
            workers = _worker_pids(proc.pid)
            time.sleep(0.1)
        assert workers, "no worker process appeared"
        time.sleep(1.0)  # let it load the bundle and start a shard
        os.kill(workers[0], signal.SIGKILL)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode not in (0, None)
    assert "a worker process died" in output and "run the same command again" in output


def test_short_audio_is_noted_or_a_bad_file_under_require_audio(tmp_path):
    from mmtok.data.media import write_video

    folder = tmp_path / "media"
    frames = torch.zeros(17, 32, 32, 3, dtype=torch.uint8)
    wave = torch.zeros(1600).numpy()  # 0.1 s of a 2.1 s clip
    write_video(folder / "short.mp4", frames, 8, audio=wave, sample_rate=16000)
    write_video(folder / "full.mp4", frames, 8, audio=torch.zeros(40000).numpy(), sample_rate=16000)
    make_bundle(tmp_path / "bundle")
    out = run(TokenizeConfig(data=str(folder), tokenizer=str(tmp_path / "bundle"), out=str(tmp_path / "a"),
                             num_workers=0, size=32, shard_size=4))
    report = json.loads((out / "bad_files.json").read_text())
    assert report["skipped"] == 0 and [n["id"] for n in report["notes"]] == ["short"]
    assert "audio shorter than the frames" in report["notes"][0]["note"]
    out = run(TokenizeConfig(data=str(folder), tokenizer=str(tmp_path / "bundle"), out=str(tmp_path / "b"),
                             num_workers=0, size=32, shard_size=4, require_audio=True))
    report = json.loads((out / "bad_files.json").read_text())
    assert [e["id"] for e in report["files"]] == ["short"] and "audio too short" in report["files"][0]["reason"]
    assert read_dataset_info(out)["num_rows"] == 1


def test_loader_builds_task_sequences_from_the_shards(corpus, reference):
    from mmtok.data.loader import LoaderConfig, TaskMixtureLoader
    from mmtok.multimodal import MultimodalTokenizer

    bundle = MultimodalTokenizer.from_pretrained(corpus / "bundle")
    loader = TaskMixtureLoader(reference, bundle.vocab, LoaderConfig(batch_size=2, group_window=2, cond_dropout=0.0,
                                                                     tasks={"t2v": 1.0, "v2a": 1.0}))
    rows = {r["id"]: row_codes(r) for r in load_token_dataset(reference)}
    checked = 0
    for batch in loader.batches(num_epochs=1):
        for i, (rid, task) in enumerate(zip(batch["ids"], batch["tasks"])):
            n = int(batch["attention_mask"][i].sum())
            parsed = bundle.parse(batch["input_ids"][i, :n], task=task, latent_hw=(2, 2))
            assert torch.equal(parsed.video, rows[rid]["video"])
            if task == "v2a":
                assert torch.equal(parsed.audio, rows[rid]["audio"])
            else:
                assert parsed.text in rows[rid]["text"]
            checked += 1
    assert checked == 10  # 11 rows, batch 2, drop_last


def test_clips_the_tokenizers_reject_are_reported_not_fatal(corpus):
    import numpy as np

    from mmtok.data.ingest import BadFileReport, Clip
    from mmtok.multimodal import MultimodalTokenizer
    from recipes.tokenize_dataset import _tokenize_batch

    bundle = MultimodalTokenizer.from_pretrained(corpus / "bundle")
    good = Clip("good", np.zeros((17, 32, 32, 3), np.uint8), np.zeros(34000, np.float32), ["ok"])
    bad = Clip("bad", np.zeros((16, 32, 32, 3), np.uint8), None, ["16 frames: not 1 + 4k"])
    report = BadFileReport()
    rows = _tokenize_batch(bundle, [good, bad, good], report, {"good": "g.mp4", "bad": "b.mp4"})
    assert [r["id"] for r in rows] == ["good", "good"] and rows[0]["video_shape"] == [5, 2, 2]
    assert len(report) == 1 and report.entries[0]["id"] == "bad" and "1 + 4k" in report.entries[0]["reason"]


def test_shipped_configs_load():
    from recipes.common import load_config

    for name, frames, fps in (("tokenize_demo.yaml", 5, 4), ("tokenize_folder.yaml", 17, 8)):
        cfg = load_config(TokenizeConfig, REPO / "recipes" / "configs" / name)
        assert (cfg.num_frames, cfg.fps) == (frames, fps) and cfg.shard_size > 0
    with pytest.raises(SystemExit, match="missing setting: data"):
        run(load_config(TokenizeConfig, REPO / "recipes" / "configs" / "tokenize_folder.yaml"))


def test_real_debug_tokenizers(corpus, tmp_path):
    """The recipe with the project's own tokenizers (debug presets, random weights) instead of the fakes."""
    from mmtok.audio import AudioTokenizer
    from mmtok.multimodal import MultimodalTokenizer
    from mmtok.text import TextTokenizer
    from mmtok.video import VideoTokenizer

    from mmtok.data.ingest import ClipConfig, load_clip, read_manifest

    captions = [c for r in read_manifest(corpus / "md" / "manifest.jsonl") for c in r.captions]
    bundle = MultimodalTokenizer(text=TextTokenizer.train(captions, vocab_size=96),
                                 video=VideoTokenizer.from_preset("debug").eval(),
                                 audio=AudioTokenizer.from_preset("debug").eval())
    bundle.save_pretrained(tmp_path / "bundle")
    out = run(cfg_for(corpus, tmp_path / "real", tokenizer=str(tmp_path / "bundle"), limit=4))
    rows = list(load_token_dataset(out))
    assert len(rows) == 4
    video, audio = row_codes(rows[0])["video"], row_codes(rows[0])["audio"]
    assert video.shape[0] == 5 and 0 <= int(video.min()) and int(video.max()) < bundle.video.codebook_size
    assert audio.shape[0] == bundle.audio.num_codebooks and int(audio.max()) < bundle.audio.codebook_size
    assert rows[0]["text_ids"][0] == bundle.text.encode(rows[0]["captions"][0])
    # the shards' codes are what the tokenizers give for the decoded clip
    clip = load_clip(read_manifest(corpus / "md" / "manifest.jsonl")[0], ClipConfig(size=32))
    with torch.no_grad():
        assert torch.equal(bundle.video.encode(torch.from_numpy(clip.frames)[None])[0], video)
