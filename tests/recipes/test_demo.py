"""recipes/demo.py end to end at debug sizes (what guards `make demo`), stage caching, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.demo import STAGES, Layout, StageError, run_command, select_stages

REPO = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = REPO / "recipes" / "configs" / "demo_debug.yaml"

EXPECTED_METRICS = {
    "t2v/digit_accuracy", "t2v/color_accuracy", "t2v/direction_accuracy",
    "t2v_held_out/digit_accuracy", "t2v_held_out/color_accuracy", "t2v_held_out/direction_accuracy",
    "v2a/pitch_accuracy", "v2a/click_f1", "continuation/psnr", "continuation/trajectory_error",
    "tokenizer/video_psnr", "tokenizer/video_ssim", "tokenizer/audio_si_snr",
    "lm/loss_t2v", "lm/loss_v2a", "lm/loss_vcont",
    # zero-shot retrieval and classification with the alignment head (the demo trains it: alignment.weight)
    *(f"align/{d}_{s}" for d in ("t2v", "v2t", "v2a", "a2v") for s in ("R@1", "R@5", "R@10", "median_rank")),
    "align/zero_shot_digit_accuracy",
}


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MMTOK_PROGRESS="0", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(REPO / "recipes" / "demo.py"), "--config", str(DEBUG_CONFIG),
                           f"out={out}", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


# ------------------------------------------------------------------------------------------------ fast units
def test_select_stages():
    assert select_stages(None, None) == list(STAGES)
    assert select_stages(None, "evaluate") == ["evaluate", "page"]
    assert select_stages("page,corpus", None) == ["page", "corpus"]
    assert select_stages("corpus,page", "pretrain") == ["page"]
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages("corpus,nope", None)
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages(None, "nope")


def test_run_command_streams_to_log_and_raises(tmp_path):
    log = tmp_path / "logs" / "x.log"
    run_command([sys.executable, "-c", "print('hello from a stage')"], log)
    assert "hello from a stage" in log.read_text()
    with pytest.raises(StageError, match="exit status 3"):
        run_command([sys.executable, "-c", "import sys; sys.exit(3)"], log)


def test_layout_reads_each_trainer_export_where_the_trainer_writes_it(tmp_path):
    from recipes.common import export_path

    paths = Layout(tmp_path)
    for run, export in ((paths.video_run, paths.video), (paths.audio_run, paths.audio), (paths.lm_run, paths.export)):
        assert export == export_path(run) == run / "export"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_every_stage_writes_its_outputs(demo_out):
    paths = Layout(demo_out)
    for stage in STAGES:
        assert (paths.stages / f"{stage}.done").is_file(), stage
        for f in paths.outputs(stage):
            assert f.exists(), f
    assert (paths.video / "model.safetensors").is_file() and (paths.audio / "model.safetensors").is_file()
    assert (paths.export / "model.safetensors").is_file() and (paths.export / "multimodal_tokenizer.json").is_file()
    assert (paths.lm_run / "metrics.jsonl").is_file()
    for run in ("video_tokenizer", "audio_tokenizer", "lm"):
        assert (demo_out / "plots" / f"{run}.png").stat().st_size > 1000
    record = json.loads((demo_out / "stages.json").read_text())
    assert set(record) == set(STAGES) and all(r["seconds"] is not None for r in record.values())
    corpus = json.loads((paths.corpus / "corpus.json").read_text())
    assert (corpus["position_grid"], corpus["crf"]) == (8, 0)       # the config's corpus settings reach the corpus


@pytest.mark.slow
def test_metrics_json_has_every_metric_with_a_baseline(demo_out):
    doc = json.loads((demo_out / "eval" / "metrics.json").read_text())
    by = {m["name"]: m for m in doc["metrics"]}
    assert EXPECTED_METRICS <= set(by), EXPECTED_METRICS - set(by)
    for name, m in by.items():
        assert m["baseline"] is not None and m["baseline_name"], name
        assert m["n"] > 0, name
    # chance levels as defined; the probe reads the ground truth of these clips
    assert by["t2v/digit_accuracy"]["baseline"] == pytest.approx(0.1)
    assert by["t2v/direction_accuracy"]["baseline"] == pytest.approx(1 / 8)
    assert by["v2a/pitch_accuracy"]["reference"] == 1.0
    table = (demo_out / "eval" / "metrics.md").read_text()
    assert all(name in table for name in EXPECTED_METRICS)
    samples = json.loads((demo_out / "eval" / "samples.json").read_text())
    for task in ("t2v", "t2v_held_out", "v2a", "continuation"):
        assert samples[task], task
    first = samples["v2a"][0]
    for key in ("wav", "mp4", "truth_mp4", "truth_wav"):
        assert (demo_out / "eval" / "samples" / first[key]).stat().st_size > 100


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_force_redoes(demo_out):
    markers = {s: (demo_out / "stages" / f"{s}.done").stat().st_mtime_ns for s in STAGES}
    proc = _demo(demo_out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in STAGES:
        assert f"==> {stage}: done (skipped" in proc.stdout, stage
        assert (demo_out / "stages" / f"{stage}.done").stat().st_mtime_ns == markers[stage]
    page = demo_out / "index.html"
    before = page.stat().st_mtime_ns
    proc = _demo(demo_out, "--stages", "page", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert page.stat().st_mtime_ns != before
    assert (demo_out / "stages" / "evaluate.done").stat().st_mtime_ns == markers["evaluate"]


# ------------------------------------------------------------------------------------------------ the page
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _rendered_body(browser: str, page: Path, profile: Path) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required",
           "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _attrs(dom: str) -> dict[str, int]:
    import re

    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    return {k: int(v) for k, v in re.findall(r'data-media-(\w+)="(\d+)"', body.group(1))}


@pytest.mark.slow
def test_page_renders_in_headless_chromium_and_media_load(demo_out, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but no chromium binary is on PATH: .ci/run must `apt-get install -y chromium`")
        pytest.skip("no chromium binary on PATH (apt-get install chromium) and CI is not set")
    dom = _rendered_body(browser, demo_out / "index.html", tmp_path / "profile")
    attrs = _attrs(dom)
    assert attrs.get("done") == 1, attrs
    # every t2v / continuation GIF, the MP4s with AAC audio, the WAV players and the three training-curve PNGs
    assert attrs["total"] >= 12, attrs
    assert attrs["failed"] == 0 and attrs["loaded"] == attrs["total"], attrs
    for text in ("Metrics", "t2v/digit_accuracy", "Training curves", "Video to audio", "held-out"):
        assert text in dom, text
    # the check itself fails when a medium cannot load
    broken = demo_out / "broken_check.html"
    broken.write_text((demo_out / "index.html").read_text().replace("plots/lm.png", "plots/missing.png"))
    try:
        attrs = _attrs(_rendered_body(browser, broken, tmp_path / "profile2"))
    finally:
        broken.unlink()
    assert attrs["failed"] == 1, attrs


def test_targets_table_marks_what_holds():
    from recipes.demo_page import targets_html

    def metric(name, value, baseline, interval=None, higher=True):
        return {"name": name, "value": value, "baseline": baseline, "baseline_name": "copy last frame",
                "higher_is_better": higher, "interval": interval, "unit": ""}

    doc = {"metrics": [metric("tokenizer_recon/digit_accuracy", 0.97, 0.1, [0.9, 0.99]),
                       metric("t2v/digit_accuracy", 0.5, 0.1, [0.36, 0.64]),
                       metric("continuation/trajectory_error", 5.0, 6.0, higher=False)]}
    table = targets_html(doc, {"corpus": {"seconds": 600.0}, "pretrain": {"seconds": 1200.0}})
    rows = table.split("</tr>")
    ceiling = next(r for r in rows if "video tokenizer ceiling: digit" in r)
    t2v = next(r for r in rows if "t2v seen combinations: digit" in r)
    traj = next(r for r in rows if "trajectory error" in r)
    wall = next(r for r in rows if "wall time" in r)
    assert "&#10003;" in ceiling and "[90, 99]%" in ceiling
    assert "&#10007;" in t2v and "97.0%" in t2v                      # below 80%; the ceiling shown beside it
    assert "&#10003;" in traj                                         # 5 px < 6 px copy-last-frame
    assert "30.0 min" in wall and "&#10007;" in wall
    assert "t2v held-out" not in table                                 # metrics not measured are left out
    raised = targets_html(doc, {"pretrain": {"seconds": 1700.0}}, 30.0, "more LM steps")
    wall = next(r for r in raised.split("</tr>") if "wall time" in r)
    assert "28.3 min" in wall and "&lt;= 30 min" in wall and "&#10003;" in wall
    assert "Wall-time budget 30 minutes: more LM steps" in raised
