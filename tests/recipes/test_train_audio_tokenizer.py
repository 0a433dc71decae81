"""The audio tokenizer recipe: runs a few steps on WAV files and a video's audio track, skips a corrupt file, writes
checkpoints, samples and an export; resumes exactly; its loss falls; the evaluation recipe reads the export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmtok.data.media import write_audio, write_video
from omegaconf import OmegaConf

from recipes.common import read_metrics, warmup_cosine
from recipes.train_audio_tokenizer import main as train_main

CONFIG = "recipes/configs/audio_tokenizer_debug.yaml"


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Four tone WAVs, one MP4 whose audio track is a tone, and one corrupt file."""
    root = tmp_path_factory.mktemp("audio")
    sr = 16000
    t = np.arange(int(0.5 * sr)) / sr
    for i, f in enumerate((220.0, 330.0, 440.0, 660.0)):
        write_audio(root / f"tone{i}.wav", (0.4 * np.sin(2 * math.pi * f * t)).astype(np.float32), sr)
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    write_video(root / "clip.mp4", frames, 8, audio=(0.3 * np.sin(2 * math.pi * 550 * t)).astype(np.float32),
                sample_rate=sr)
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    return root


def run(tmp_path, audio_dir, *extra, resume=False):
    argv = ["--config", CONFIG, f"run_dir={tmp_path}", "demo_corpus_clips=0", f"data.paths=[{audio_dir}]",
            "train.steps=12", "train.save_every=6", *extra]
    if resume:
        argv.insert(0, "--resume")
    return train_main(argv)


def test_recipe_trains_writes_artifacts_and_skips_bad_files(tmp_path, audio_dir):
    result = run(tmp_path / "a", audio_dir)
    run_dir = tmp_path / "a"
    assert result["steps"] == 12 and result["skipped"] == 1
    bad = json.loads((run_dir / "bad_files.json").read_text())
    assert list(bad) == [str(audio_dir / "broken.wav")]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "latest").read_text() == "step_00000012"
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert "original.wav" in samples and "step_00000010_q4.wav" in samples
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "loss" in r] == list(range(2, 13, 2))
    assert any("d_loss" in r for r in rows) and any("val/si_snr_q4" in r for r in rows)

    from mmtok.audio import load_audio_tokenizer
    from recipes.eval_audio_tokenizer import main as eval_main

    export = run_dir / "export"                                         # <run_dir>/export, as every trainer
    tok = load_audio_tokenizer(export)
    assert tok.encode(torch.zeros(1, 1, 64)).shape == (1, 4, 2)
    assert set(json.loads((export / "eval.json").read_text())["levels"]) == {"1", "2", "4"}
    out = eval_main(["--model", str(export), "--paths", str(audio_dir), "--levels", "1", "4",
                     "--out", str(tmp_path / "eval.json")])
    assert out["num_clips"] == 5 and len(out["skipped"]) == 1 and out["rtf"] > 0
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved["levels"]) == {"1", "4"} and math.isfinite(saved["levels"]["4"]["si_snr"])


def test_resume_continues_exactly_and_loss_falls(tmp_path, audio_dir):
    run(tmp_path / "full", audio_dir, "loss.adversarial=0", "train.eval_every=100", "train.sample_every=100")
    run(tmp_path / "cut", audio_dir, "loss.adversarial=0", "train.eval_every=100", "train.sample_every=100",
        "train.stop_at=6")
    assert not (tmp_path / "cut" / "export").exists()                   # interrupted runs do not export
    run(tmp_path / "cut", audio_dir, "loss.adversarial=0", "train.eval_every=100", "train.sample_every=100",
        resume=True)
    full = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full") if "loss" in r}
    cut = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut") if "loss" in r}
    assert sorted(cut) == sorted(full) == list(range(2, 13, 2))
    for step in full:
        assert cut[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
    # the schedule advances once per optimizer step, before and after the resume
    cfg = OmegaConf.load(CONFIG).train
    logged = [r for r in read_metrics(tmp_path / "cut") if "lr" in r]
    assert [r["step"] for r in logged] == list(range(2, 13, 2))
    for r in logged:
        expect = cfg.lr * warmup_cosine(r["step"], warmup_steps=cfg.warmup_steps, total_steps=12,
                                        min_ratio=cfg.get("min_lr_ratio", 0.1))
        assert r["lr"] == pytest.approx(expect, rel=1e-6), r["step"]
    assert full[12] < full[2]


def test_debug_config_runs_from_a_fresh_clone(tmp_path):
    """The debug config trains on a Moving-Digits corpus it generates in the run folder: no other input."""
    result = train_main(["--config", CONFIG, f"run_dir={tmp_path}", "train.steps=4", "train.eval_every=4",
                         "train.save_every=4", "train.sample_every=4"])
    assert result["steps"] == 4
    assert (tmp_path / "corpus" / "manifest.jsonl").is_file() and (tmp_path / "export" / "config.json").is_file()
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path) if "loss" in r)


def test_recipe_rejects_bad_config(tmp_path):
    with pytest.raises(ValueError, match="no training audio"):
        train_main(["--config", CONFIG, f"run_dir={tmp_path}", "demo_corpus_clips=0"])
    with pytest.raises(Exception, match="nope"):
        train_main(["--config", CONFIG, f"run_dir={tmp_path}", "train.nope=1"])


def test_crops_start_on_frames_when_asked(tmp_path):
    from mmtok.data.audio_clips import AudioClips

    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32)   # no two windows alike
    write_audio(tmp_path / "noise.wav", noise, 16000)
    clips = AudioClips(paths=[str(tmp_path / "noise.wav")], sample_rate=16000)
    whole = clips.get(0)
    gen = torch.Generator().manual_seed(0)
    for align in (1, 500):
        crops = clips.random_batch(gen, 16, 1000, align=align)[:, 0]
        assert crops.shape == (16, 1000)
        offsets = []
        for c in crops:   # where each crop sits in the file
            offsets.append(next(o for o in range(whole.numel() - 999) if torch.equal(whole[o:o + 1000], c)))
        assert all(o % align == 0 for o in offsets)
        if align == 1:
            assert any(o % 500 for o in offsets)
