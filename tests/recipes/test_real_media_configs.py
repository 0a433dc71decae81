"""The real-media configs (video_tokenizer_real64/real128, audio_tokenizer_speech16k/demo_real): their stated shapes
and bitrates, two training steps of each at debug size on a tiny corpus in the real-media format, the held-out-source
scores in the video trainer's logs, the GAN + LeCam path on footage, and the evaluation recipe on a real manifest and
on a folder."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "mmtok" / "data"))

from realfakes import tiny_real_corpus  # noqa: E402

from mmtok.audio import AudioTokenizerConfig  # noqa: E402
from mmtok.video import VideoTokenizer, VideoTokenizerConfig  # noqa: E402
from recipes.common import load_config, read_metrics  # noqa: E402
from recipes.train_audio_tokenizer import AudioTokenizerTrainConfig  # noqa: E402
from recipes.train_audio_tokenizer import main as train_audio  # noqa: E402
from recipes.train_video_tokenizer import TrainVideoTokenizerConfig  # noqa: E402
from recipes.train_video_tokenizer import main as train_video  # noqa: E402

CONFIGS = REPO / "recipes" / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_real_corpus(tmp_path_factory.mktemp("real"))


# ---------------------------------------------------------------------------------------------------------- video
@pytest.mark.parametrize("name, clip, codes", [("real64", (17, 64, 64), (5, 8, 8)),
                                               ("real128", (17, 128, 128), (5, 16, 16))])
def test_video_configs_state_their_shapes(name, clip, codes):
    cfg = load_config(TrainVideoTokenizerConfig, CONFIGS / f"video_tokenizer_{name}.yaml")
    model = VideoTokenizerConfig.from_preset(cfg.model.preset, **cfg.model.overrides)
    t, h, w = clip
    assert (cfg.data.num_frames, cfg.data.size, cfg.data.size) == clip and cfg.data.fps == 8.0
    assert (1 + (t - 1) // model.temporal_factor, h // model.spatial_factor, w // model.spatial_factor) == codes
    assert model.bits_per_code == 12 and math.prod(codes) * 12 == {"real64": 3840, "real128": 15360}[name]
    assert cfg.data.split == "train" and cfg.data.sample_split == "validation" and cfg.train.eval_every > 0
    assert cfg.data.flip and cfg.data.crop_scale and cfg.data.hue > 0 and max(cfg.data.frame_steps) == 2


def debug_video(source: Path, run: Path, **extra) -> list[str]:
    """Two steps of a real config at debug size: the debug preset's widths under the config's layout overrides."""
    base = {"run_dir": run, "data.source": source, "model.preset": "debug",
            "model.overrides.base_channels": 8, "model.overrides.num_res_blocks": 1, "data.num_frames": 9,
            "data.size": 16, "data.resize": 32, "data.num_samples": 2, "train.steps": 2, "train.batch_size": 2,
            "train.warmup_steps": 1, "train.log_every": 1, "train.eval_every": 2, "train.eval_clips": 2,
            "train.save_every": 2, "train.sample_every": 2, "train.num_threads": 1, "train.mixed_precision": "'no'",
            "train.ema_decay": 0.0, "disc.channels": 4, "disc.num_layers": 2, **extra}
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("name", ["real64", "real128"])
def test_video_config_trains_two_steps_with_held_out_scores(corpus, tmp_path, name):
    run = tmp_path / name
    # the GAN + LeCam from the first step: the adversarial path on footage (off in real64, late in real128)
    result = train_video(["--config", str(CONFIGS / f"video_tokenizer_{name}.yaml"),
                          *debug_video(corpus / "video.jsonl", run, **{"loss.disc_weight": 0.1, "loss.disc_start": 0})])
    assert result["step"] == 2
    rows = read_metrics(run)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(np.isfinite(r["loss"]) for r in steps)
    assert all(np.isfinite(r[k]) for r in steps for k in ("g_loss", "d_loss", "lecam"))
    scores = [r for r in rows if "val/psnr" in r]
    assert [r["step"] for r in scores] == [2] and 0 < scores[0]["val/psnr"] < 100
    assert 0 < scores[0]["train_eval/psnr"] < 100
    assert result["val/psnr"] == scores[0]["val/psnr"]
    exported = VideoTokenizer.from_pretrained(run / "export").config
    assert (exported.patch_size, exported.quantizer, exported.codebook_size) == (4, "fsq", 4096)
    saved = (run / "config.yaml").read_text()
    assert "crop_scale:" in saved and "frame_steps:" in saved and "flip: true" in saved


def test_held_out_scores_without_a_held_out_split(corpus, tmp_path):
    """A folder has no splits: the trainer scores its training clips only, and says so."""
    run = tmp_path / "folder"
    train_video(["--config", str(CONFIGS / "video_tokenizer_real64.yaml"),
                 *debug_video(corpus / "video", run, **{"data.split": "null"})])
    scores = [r for r in read_metrics(run) if r["step"] == 2 and "train_eval/psnr" in r]
    assert len(scores) == 1 and "val/psnr" not in scores[0]


def test_eval_recipe_on_a_real_manifest_and_a_folder(corpus, tmp_path):
    from recipes.eval_video_tokenizer import main as evaluate

    VideoTokenizer.from_preset("debug").save_pretrained(tmp_path / "model")
    args = [f"model={tmp_path / 'model'}", "data.num_frames=9", "data.size=16", "batch_size=2"]
    metrics = evaluate([*args, f"data.source={corpus / 'video.jsonl'}", "data.split=validation", "max_clips=3",
                        f"out={tmp_path / 'eval'}"])
    # three clips of the two held-out sources, taken in turn from each
    assert metrics["clip_ids"] == ["media-harbour-0000", "media-market-0000", "media-harbour-0001"]
    assert metrics["per_source"]["media-harbour"]["clips"] == 2 and metrics["per_source"]["media-market"]["clips"] == 1
    assert metrics["bits_per_clip"] == 3 * 4 * 4 * 6 and metrics["bits_per_pixel"] == pytest.approx(288 / (9 * 256))
    for key in ("psnr", "ssim", "codebook_utilization"):
        assert np.isfinite(metrics[key])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_source"] == metrics["per_source"]
    assert (tmp_path / "eval" / "side_by_side.mp4").stat().st_size > 0
    folder = evaluate([*args, f"data.source={corpus / 'video'}", "data.split=null", f"out={tmp_path / 'eval2'}"])
    assert folder["num_clips"] == 8 and "per_source" not in folder          # a folder names no sources


# ---------------------------------------------------------------------------------------------------------- audio
def test_audio_configs_state_their_bitrates():
    speech = load_config(AudioTokenizerTrainConfig, CONFIGS / "audio_tokenizer_speech16k.yaml")
    cfg = AudioTokenizerConfig.from_preset(speech.model.preset, **speech.model.overrides)
    assert (cfg.sample_rate, cfg.hop_length, cfg.frame_rate) == (16000, 320, 50.0)
    assert cfg.kbps(cfg.num_quantizers) == pytest.approx(6.0)
    demo = load_config(AudioTokenizerTrainConfig, CONFIGS / "audio_tokenizer_demo_real.yaml")
    cfg = AudioTokenizerConfig.from_preset(demo.model.preset, **demo.model.overrides)
    assert cfg.sample_rate == 16000 and cfg.kbps(cfg.num_quantizers) == pytest.approx(2.048)
    for c in (speech, demo):
        assert c.data.manifest.endswith("audio.jsonl") and c.data.val_split == "validation"
        assert not c.data.crop_on_frames


@pytest.mark.parametrize("name, debug", [
    ("speech16k", {"model.overrides.base_channels": 4, "model.overrides.num_blocks": 1,
                   "model.overrides.dimension": 16,
                   "model.overrides.num_quantizers": 2, "model.overrides.codebook_size": 16,
                   "data.crop_seconds": 0.04}),
    ("demo_real", {"data.crop_seconds": 0.0625}),
])
def test_audio_config_trains_two_steps(corpus, tmp_path, name, debug):
    run = tmp_path / name
    overrides = {"run_dir": run, "data.manifest": corpus / "audio.jsonl", "data.num_val_clips": 2,
                 "train.steps": 2, "train.batch_size": 2, "train.warmup_steps": 1, "train.log_every": 1,
                 "train.eval_every": 2, "train.save_every": 2, "train.sample_every": 2, "train.num_threads": 1,
                 **debug}
    result = train_audio(["--config", str(CONFIGS / f"audio_tokenizer_{name}.yaml"),
                          *[f"{k}={v}" for k, v in overrides.items()]])
    assert result["steps"] == 2 and result["num_clips"] == 2
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    val = [r for r in rows if any(k.startswith("val/mel_q") for k in r)]
    assert [r["step"] for r in val] == [2] and all(np.isfinite(v) for v in val[0].values())
    assert (run / "export" / "eval.json").is_file()
