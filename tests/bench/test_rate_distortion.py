"""The rate-distortion benchmarks' quick modes (bench/video_rate_distortion.py, bench/audio_rate_distortion.py): every
row is measured on the same clips, bits are counted exactly, a lossless baseline scores the documented cap."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_video_rate_distortion_quick(tmp_path):
    out = tmp_path / "video_rd.json"
    # 3x4x4 is the debug tokenizer's bits (3x8x8 codes of 6 bits = 1,152); 9x32x32 is the whole clip: lossless
    result = bench("video_rate_distortion").main(["--quick", "--thumbnails", "3x4x4", "9x32x32", "--peer-budget", "1",
                                                  "--threads", "1", "--out", str(out)])
    rows = {r["name"]: r for r in result["rows"]}
    assert result["setting"]["num_clips"] == 3 and result["setting"]["clip"] == [9, 32, 32]
    tokenizer = rows["debug (untrained)"]
    assert tokenizer["clip_bits"] == [3 * 8 * 8 * 6] * 3 and tokenizer["code_shape"] == [3, 8, 8]
    assert rows["thumbnail 3x4x4"]["clip_bits"] == [3 * 4 * 4 * 3 * 8] * 3
    lossless = rows["thumbnail 9x32x32"]
    assert lossless["clip_bits"] == [9 * 32 * 32 * 3 * 8] * 3
    assert lossless["clip_psnr"] == [100.0] * 3 and lossless["psnr"] == 100.0          # infinite, capped at 100 dB
    assert 0 < rows["thumbnail 3x4x4"]["psnr"] < 100
    for budget in (1152, 221184):                                   # H.264 at every row's bits
        h264 = rows[f"H.264 <= {budget} bits"]
        assert h264["over_budget"] == sum(b > budget for b in h264["clip_bits"])
        assert all(isinstance(b, int) and b > 0 for b in h264["clip_bits"]) and math.isfinite(h264["psnr"])
    assert rows["H.264 <= 221184 bits"]["over_budget"] == 0
    peer = rows["magvit2-pytorch"]                                  # an optional peer; never trained on 9x32x32
    assert "psnr" not in peer and peer["status"].startswith(("not installed", "needs 17x64x64"))
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert out.with_suffix(".png").stat().st_size > 0 and "| thumbnail 3x4x4 | 1,152 |" in result["table"]


def test_video_rate_distortion_rejects_bad_arguments(tmp_path):
    module = bench("video_rate_distortion")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--thumbnails", "5x8", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path / "x.json")])                         # no manifest
    with pytest.raises(FileNotFoundError, match="no export"):
        module.main(["--quick", "--tokenizer", f"x={tmp_path / 'nothing'}", "--out", str(tmp_path / "x.json")])


def test_audio_rate_distortion_quick(tmp_path):
    out = tmp_path / "audio_rd.json"
    result = bench("audio_rate_distortion").main(["--quick", "--threads", "1", "--out", str(out)])
    rows = {r["name"]: r for r in result["rows"]}
    assert result["setting"]["num_clips"] == 2 and result["setting"]["seconds_of_audio"] == 2.0
    # the debug codec: 500 frames/s x 6 bits a level
    codec = [r for r in result["rows"] if r["kind"] == "codec"]
    assert [(r["levels"], r["kbps"]) for r in codec] == [(1, 3.0), (2, 6.0), (4, 12.0)]
    assert all(r["rtf"] > 0 and math.isfinite(r["si_snr"]) and r["mel_distance"] > 0 for r in codec)
    for kbps in (6, 12):
        opus = rows[f"Opus {kbps} kbps"]
        assert opus["kbps"] == pytest.approx(sum(opus["bits"]) / 2.0 / 1000) and opus["kbps"] > 0
    # PCM at each codec's full bitrate and each Opus bitrate: 8-bit samples at bitrate / 8, bits exact
    assert rows["PCM 750 Hz x 8 bits"]["bits"] == [750 * 8] * 2 and rows["PCM 750 Hz x 8 bits"]["kbps"] == 6.0
    assert rows["PCM 1500 Hz x 8 bits"]["bits"] == [1500 * 8] * 2
    assert rows["Opus 12 kbps"]["mel_distance"] < rows["PCM 1500 Hz x 8 bits"]["mel_distance"]
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| Opus 6 kbps |" in result["table"]


def test_audio_rate_distortion_refuses_a_codec_at_another_rate(tmp_path):
    from mmtok.audio import AudioTokenizer

    AudioTokenizer.from_preset("debug", sample_rate=24000).save_pretrained(tmp_path / "codec24k")
    with pytest.raises(ValueError, match="24000 Hz"):
        bench("audio_rate_distortion").main(["--quick", "--codec", f"c={tmp_path / 'codec24k'}", "--threads", "1",
                                             "--out", str(tmp_path / "x.json")])
