"""recipes/generate.py on a debug export directory (tiny random LM + tiny tokenizers side by side).

Each command writes media that PyAV reads back with the expected frame count / duration; bad inputs end with one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lm import MMLMConfig, MMLMForCausalLM
from mmtok.audio import AudioTokenizer
from mmtok.data.media import probe, read_audio, read_video, write_audio, write_video
from mmtok.multimodal import MultimodalTokenizer
from mmtok.text import TextTokenizer
from mmtok.video import VideoTokenizer
from recipes.generate import main

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red seven drifts up", "the digit 3 in blue heading east", "a green two moves down and to the left"]
FPS, SR, HW = 8.0, 16000, 16
COMMON = ["--clip-frames", "9", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An export folder as recipes/pretrain.py writes it: LM config.json + model.safetensors and the bundle."""
    torch.manual_seed(0)
    text = TextTokenizer.train(CAPTIONS * 4, vocab_size=40)
    video = VideoTokenizer.from_preset("debug").eval()
    audio = AudioTokenizer.from_preset("debug", ratios=(4, 4, 4, 4)).eval()
    bundle = MultimodalTokenizer(text=text, video=video, audio=audio, num_audio_levels=2, latent_hw=(4, 4))
    model = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=bundle.vocab))
    d = tmp_path_factory.mktemp("export")
    model.save_pretrained(d)
    bundle.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """A 32x24 MP4 with sound (resized and centre-cropped to 16x16 on reading), 12 frames at 8 fps."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(12, 24, 32, 3), dtype=np.uint8)
    t = np.arange(int(12 / FPS * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return write_video(tmp_path_factory.mktemp("input") / "in.mp4", frames, FPS, audio=wave, sample_rate=SR)


def run(*argv: str) -> int:
    return main(list(argv))


def test_t2v_mp4_and_gif_with_several_samples(export_dir, tmp_path, capsys):
    assert run("t2v", "--model", str(export_dir), "--prompt", CAPTIONS[0], "--out", str(tmp_path / "clip.mp4"),
               "--top-k", "20", "--cfg-scale", "2", *COMMON) == 0
    frames = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (9, HW, HW, 3)
    assert probe(tmp_path / "clip.mp4").fps == pytest.approx(FPS)
    assert run("t2v", "--model", str(export_dir), "--prompt", CAPTIONS[1], "--out", str(tmp_path / "clip.gif"),
               "--num-samples", "2", "--temperature", "0.8", "--upscale", "2", *COMMON) == 0
    for i in range(2):
        gif = read_video(tmp_path / f"clip_{i}.gif")
        assert gif.shape == (9, 2 * HW, 2 * HW, 3)
    assert not (tmp_path / "clip.gif").exists()
    assert "wrote" in capsys.readouterr().out


def test_same_seed_same_file_content(export_dir, tmp_path):
    for name in ("a.mp4", "b.mp4"):
        assert run("t2v", "--model", str(export_dir), "--prompt", CAPTIONS[2], "--out", str(tmp_path / name),
                   *COMMON) == 0
    assert np.array_equal(read_video(tmp_path / "a.mp4"), read_video(tmp_path / "b.mp4"))


def test_t2i_png(export_dir, tmp_path):
    assert run("t2i", "--model", str(export_dir), "--prompt", CAPTIONS[0], "--out", str(tmp_path / "img.png"),
               *COMMON) == 0
    assert read_video(tmp_path / "img.png").shape == (1, HW, HW, 3)


def test_v2a_wav_and_muxed_video(export_dir, clip_file, tmp_path):
    out, muxed = tmp_path / "out.wav", tmp_path / "with_sound.mp4"
    assert run("v2a", "--model", str(export_dir), "--video", str(clip_file), "--out", str(out), "--mux", str(muxed),
               "--input-frames", "5", *COMMON) == 0
    wave = read_audio(out, sample_rate=SR)
    assert wave.shape == (round(5 / FPS * SR),)  # exactly the clip's duration
    info = probe(muxed)
    assert info.has_audio and info.has_video
    assert read_video(muxed).shape == (5, HW, HW, 3)
    assert read_audio(muxed, sample_rate=SR).shape == wave.shape


def test_continue_writes_input_plus_new_frames(export_dir, clip_file, tmp_path):
    assert run("continue", "--model", str(export_dir), "--video", str(clip_file), "--frames", "4",
               "--input-frames", "5", "--out", str(tmp_path / "longer.mp4"), *COMMON) == 0
    assert read_video(tmp_path / "longer.mp4").shape == (9, HW, HW, 3)
    assert run("continue", "--model", str(export_dir), "--video", str(clip_file), "--frames", "4",
               "--input-frames", "5", "--only-new", "--out", str(tmp_path / "new.gif"), *COMMON) == 0
    assert read_video(tmp_path / "new.gif").shape == (4, HW, HW, 3)


def test_a2v_from_a_wav_with_the_audio_muxed(export_dir, tmp_path):
    wav = write_audio(tmp_path / "in.wav", (0.2 * np.random.default_rng(1).standard_normal(20000)).astype(np.float32),
                      SR)
    out = tmp_path / "a2v.mp4"
    assert run("a2v", "--model", str(export_dir), "--audio", str(wav), "--out", str(out), "--with-audio",
               *COMMON) == 0
    assert read_video(out).shape == (9, HW, HW, 3)
    assert read_audio(out, sample_rate=SR).shape == (round(9 / FPS * SR),)


def test_clear_errors(export_dir, clip_file, tmp_path, capsys):
    def error_of(*argv: str) -> str:
        capsys.readouterr()
        assert run(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") or "\nerror: " in err
        return err

    assert "model directory not found" in error_of("t2v", "--model", str(tmp_path / "missing"), "--prompt", "x",
                                                   "--out", str(tmp_path / "x.mp4"))
    not_media = tmp_path / "notes.mp4"
    not_media.write_text("this is not a video\n")
    assert "notes.mp4" in error_of("v2a", "--model", str(export_dir), "--video", str(not_media),
                                   "--out", str(tmp_path / "x.wav"), *COMMON)
    assert "input video not found" in error_of("v2a", "--model", str(export_dir), "--video",
                                               str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x.wav"), *COMMON)
    assert "1 + 4k" in error_of("v2a", "--model", str(export_dir), "--video", str(clip_file), "--input-frames", "6",
                                "--out", str(tmp_path / "x.wav"), *COMMON)
    assert "multiple" in error_of("continue", "--model", str(export_dir), "--video", str(clip_file), "--frames", "3",
                                  "--input-frames", "5", "--out", str(tmp_path / "x.mp4"), *COMMON)
    assert ".wav" in error_of("v2a", "--model", str(export_dir), "--video", str(clip_file),
                              "--out", str(tmp_path / "x.mp3"), *COMMON)
    no_model = tmp_path / "empty_dir"
    no_model.mkdir()
    assert "config.json" in error_of("t2v", "--model", str(no_model), "--prompt", "x",
                                     "--out", str(tmp_path / "x.mp4"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    try:  # root may write anywhere: the check itself is what is tested, through os.access
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
            err = error_of("t2v", "--model", str(export_dir), "--prompt", "x", "--out", str(locked / "x.mp4"), *COMMON)
        assert "locked" in err and "not writable" in err
    finally:
        locked.chmod(0o755)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and "error:" line, status 2
        run("t2v", "--model", str(export_dir), "--prompt", "x", "--out", str(tmp_path / "x.mp4"), "--upscale", "-2")
    assert exit_info.value.code == 2 and "--upscale: expected an integer >= 1, got -2" in capsys.readouterr().err


def test_runs_as_a_script(tmp_path):
    """The file runs as ``python recipes/generate.py`` (its own sys.path setup) and reports errors by status."""
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "generate.py"), "t2v", "--model",
                           str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "x.mp4")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "model directory not found" in proc.stderr
