"""End-to-end tests of recipes/train_video_tokenizer.py on tiny generated media (debug preset, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

import mmtok.video  # noqa: F401  (registers the AutoModel class)
from mmtok.video import VideoTokenizer
from recipes.common import read_metrics
from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records
from recipes.train_video_tokenizer import main


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def moving_square(seed: int, t: int = 12, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colour = rng.integers(100, 256, 3)
    frames = np.full((t, size, size, 3), 16, np.uint8)
    y, x = rng.integers(0, size - 6, 2)
    dy, dx = rng.choice([-1, 1], 2)
    for i in range(t):
        frames[i, y:y + 6, x:x + 6] = colour
        y, x = np.clip(y + dy, 0, size - 6), np.clip(x + dx, 0, size - 6)
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Four short MP4 clips, one PNG image and one corrupt 'video' in a folder, plus a manifest over them."""
    root = tmp_path_factory.mktemp("media")
    for i in range(4):
        write_mp4(root / f"clip{i}.mp4", moving_square(i))
    Image.fromarray(moving_square(9)[0]).save(root / "still.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video")
    lines = [{"id": f"c{i}", "video": f"clip{i}.mp4", "caption": "a square", "split": "train"} for i in range(3)]
    lines.append({"id": "bad", "video": "broken.mp4", "caption": "broken", "split": "train"})
    lines.append({"id": "v0", "video": "clip3.mp4", "caption": "a square", "split": "validation"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def overrides(run_dir: Path, source: Path, steps: int, **extra: object) -> list[str]:
    base = {
        "run_dir": str(run_dir), "data.source": str(source), "model.preset": "debug",
        "data.num_frames": 9, "data.size": 16, "data.num_samples": 2, "train.steps": steps,
        "train.batch_size": 2, "train.lr": 3e-3, "train.warmup_steps": 2, "train.log_every": 1,
        "train.save_every": 3, "train.sample_every": 3, "train.num_threads": 1,
        "loss.disc_start": 2, "disc.channels": 4, "disc.num_layers": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_folder_records_include_images(media):
    records = find_records(VideoClipConfig(source=str(media)))
    names = sorted(r.video.name for r in records)
    assert names == ["broken.mp4", "clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.mp4", "still.png"]
    data = RandomClips(records, VideoClipConfig(source=str(media), num_frames=9, size=16), seed=0)
    still = data.load(names.index("still.png"), None)
    assert still.shape == (9, 16, 16, 3) and (still == still[:1]).all()
    # batches are a pure function of (seed, step), and the unreadable file is skipped and reported
    a = torch.cat([data.batch(s, 3) for s in range(4)])
    again = RandomClips(records, VideoClipConfig(source=str(media), num_frames=9, size=16), seed=0)
    b = torch.cat([again.batch(s, 3) for s in range(4)])
    assert a.shape == (12, 9, 16, 16, 3) and torch.equal(a, b)
    assert [e["id"] for e in data.report.entries] == ["broken"]
    short = RandomClips(records, VideoClipConfig(source=str(media), num_frames=9, size=16, crop_frames=5), seed=0)
    assert short.batch(0, 3).shape == (3, 5, 16, 16, 3)


def test_recipe_trains_exports_and_resumes_exactly(media, tmp_path):
    run = tmp_path / "run"
    result = main(overrides(run, media / "manifest.jsonl", 6, **{"train.ema_decay": 0.9}))
    assert result["step"] == 6
    rows = read_metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert "g_loss" in train_rows[-1] and "lecam" in train_rows[-1]         # the GAN started at step 2
    assert train_rows[-1]["data/bad_files"] == 1
    bad = json.loads((run / "bad_files.json").read_text())
    assert [f["id"] for f in bad["files"]] == ["bad"]
    assert sorted(p.name for p in (run / "samples").glob("*.gif")) == ["step_00000003.gif", "step_00000006.gif"]
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()

    model = AutoModel.from_pretrained(run / "export")                       # <run_dir>/export, as every trainer
    assert isinstance(model, VideoTokenizer)
    assert model.config.fps == 8.0                                          # the data's frame rate is recorded
    assert model.encode(torch.zeros(1, 9, 16, 16, 3, dtype=torch.uint8)).shape == (1, 3, 4, 4)

    # Simulate a kill after step 3: point `latest` back at that checkpoint and resume.
    checkpoints = run / "checkpoints"
    assert (checkpoints / "step_00000003" / "trainer_state.json").is_file()
    (checkpoints / "latest").write_text("step_00000003")
    main(["--resume", *overrides(run, media / "manifest.jsonl", 6, **{"train.ema_decay": 0.9})])
    resumed = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]                # no step logged twice
    for before, after in zip(train_rows[3:], resumed[3:]):
        for key in ("loss", "rec_loss", "d_loss", "g_loss"):
            assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-7), (key, before["step"])


def test_recipe_loss_falls_on_a_folder(media, tmp_path):
    run = tmp_path / "run"
    main(overrides(run, media, 40, **{"loss.disc_weight": 0.0, "train.save_every": 100,
                                      "train.sample_every": 100, "train.lr": 5e-3}))
    rows = [r for r in read_metrics(run) if "rec_loss" in r]
    first = np.mean([r["rec_loss"] for r in rows[:5]])
    last = np.mean([r["rec_loss"] for r in rows[-5:]])
    assert last < 0.7 * first, (first, last)
    assert not (run / "checkpoints" / "step_00000100").exists()
    assert (run / "checkpoints" / "step_00000040").is_dir()                 # the final step is checkpointed


def test_recipe_joint_image_video_steps(media, tmp_path):
    run = tmp_path / "run"
    main(overrides(run, media, 4, **{"data.image_batch_size": 3, "data.image_every": 2, "loss.disc_start": 0,
                                     "export_dir": tmp_path / "tokenizer"}))
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["image_step"] for r in rows] == [0, 1, 0, 1]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["d_loss"]) for r in rows)
    assert (tmp_path / "tokenizer" / "config.json").is_file() and not (run / "export").exists()   # export_dir


@pytest.mark.parametrize("quantizer", ["fsq", "lfq"])
def test_recipe_trains_under_bf16_autocast(media, tmp_path, quantizer):
    """train.mixed_precision=bf16 (a GPU user's setting; CPU autocast runs the same wrapper): accelerate converts the
    model's outputs back to fp32, quantizer metrics included, and the GAN steps run in it too."""
    from accelerate.state import AcceleratorState

    run = tmp_path / "run"
    levels = "fsq_levels: [5, 5, 5]" if quantizer == "fsq" else "codebook_size: 64"
    AcceleratorState._reset_state(True)
    try:
        main(overrides(run, media, 4, **{"train.mixed_precision": "bf16", "loss.disc_start": 2,
                                         "model.overrides": f"{{quantizer: {quantizer}, {levels}}}"}))
    finally:
        AcceleratorState._reset_state(True)
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)
    assert all(0 < r["quantizer/utilization"] <= 1 for r in rows)
    assert np.isfinite(rows[-1]["d_loss"])


def test_same_config_same_steps_gives_the_same_codes(media, tmp_path):
    """Budgets are step counts: two runs of one config (FSQ, the decode cache on, joint image steps) export identical
    tokenizers, also when the second prepares its batches in worker threads (train.data_workers)."""
    extra = {"model.overrides": "{quantizer: fsq, fsq_levels: [5, 5, 5]}", "loss.disc_weight": 0.0,
             "data.cache_mb": 64, "data.image_batch_size": 2, "data.image_every": 2, "train.save_every": 100,
             "train.sample_every": 100}
    video = torch.from_numpy(moving_square(5, t=9))[None]
    codes = []
    for name, workers in (("a", 0), ("b", 2)):
        main(overrides(tmp_path / name, media / "manifest.jsonl", 5, **extra, **{"train.data_workers": workers}))
        model = VideoTokenizer.from_pretrained(tmp_path / name / "export").eval()
        assert model.config.quantizer == "fsq" and model.codebook_size == 125
        codes.append(model.encode(video))
    losses = [[r["loss"] for r in read_metrics(tmp_path / n) if "loss" in r] for n in ("a", "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 5
    assert torch.equal(codes[0], codes[1])


def test_debug_config_runs_from_a_fresh_clone(tmp_path):
    """The debug config trains on a Moving-Digits corpus it generates in the run folder: no other input."""
    result = main(["--config", "recipes/configs/video_tokenizer_debug.yaml", f"run_dir={tmp_path}", "train.steps=4",
                   "train.save_every=4", "train.sample_every=4", "train.log_every=1"])
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    assert manifest.is_file() and len(manifest.read_text().splitlines()) == 24
    assert f"source: {manifest}" in (tmp_path / "config.yaml").read_text()   # the run records what it trained on
    assert (tmp_path / "export" / "config.json").is_file()
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert result["step"] == 4


def test_bad_config_errors(media, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.source not found"):
        main(overrides(tmp_path / "r", tmp_path / "missing.jsonl", 1))
    with pytest.raises(Exception, match="not_a_key"):
        main(overrides(tmp_path / "r", media, 1, **{"train.not_a_key": 1}))


# ------------------------------------------------------------------------------------------------------ evaluation
def test_eval_recipe(media, tmp_path):
    from recipes.eval_video_tokenizer import main as evaluate

    torch.manual_seed(0)
    VideoTokenizer.from_preset("debug").save_pretrained(tmp_path / "model")
    metrics = evaluate([f"model={tmp_path / 'model'}", f"data.source={media / 'manifest.jsonl'}", "data.split=train",
                        "data.num_frames=9", "data.size=16", f"out={tmp_path / 'eval'}", "batch_size=2"])
    assert metrics["num_clips"] == 3 and [b["id"] for b in metrics["bad_files"]] == ["bad"]
    assert metrics["code_shape"] == [3, 4, 4]
    assert metrics["bits_per_pixel"] == pytest.approx(3 * 4 * 4 * 6 / (9 * 16 * 16))
    assert metrics["compression_ratio"] == pytest.approx(24 / metrics["bits_per_pixel"])
    assert 0 < metrics["codebook_utilization"] <= 1 and metrics["encode_frames_per_s"] > 0
    assert 0 < metrics["psnr"] < 60 and -1 <= metrics["ssim"] <= 1
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"])
    for name in ("side_by_side.gif", "side_by_side.mp4"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    with av.open(str(tmp_path / "eval" / "side_by_side.mp4")) as f:
        assert f.streams.video[0].height == 32                              # originals above reconstructions
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        evaluate([f"model={tmp_path / 'nothing'}", f"data.source={media}"])


def test_eval_reports_code_redundancy():
    """A still scene's codes repeat every latent frame: the run-length form keeps frame 0 and one run per frame."""
    from recipes.eval_video_tokenizer import evaluate

    class StillScene:   # encodes every clip to the same 2x2 codes in each of 3 latent frames; decodes to grey
        codebook_size = 8

        def eval(self):
            return self

        def encode(self, clips):
            return torch.arange(4).reshape(1, 1, 2, 2).expand(len(clips), 3, 2, 2).clone()

        def decode(self, codes):
            return torch.zeros(len(codes), 3, 5, 8, 8)

    clips = torch.full((3, 5, 8, 8, 3), 128, dtype=torch.uint8)
    metrics = evaluate(StillScene(), clips, batch_size=2)
    assert metrics["repeated_code_fraction"] == 1.0
    assert metrics["run_length_ratio"] == pytest.approx((4 + 1 + 1) / 12)        # frame 0, then <run_4> twice
    assert metrics["psnr"] == 100.0                                            # grey 128 decodes back exactly
