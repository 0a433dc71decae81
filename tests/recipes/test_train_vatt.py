"""recipes/train_vatt.py at debug size: trains from a fresh clone (a corpus it generates), resumes exactly, exports a
loadable model with its tokenizer and clip settings, writes the evaluation JSON; --eval-only with token-reduction
switches; fine-tuning from the export; the token-efficiency benchmark on the export; bad configs."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import lm  # noqa: F401  (registers VATT with the Auto classes)
from lm.modeling_vatt import VATTModel
from lm.vatt_evaluation import load_vatt_export
from recipes.common import read_metrics
from recipes.train_vatt import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "recipes/configs/vatt_debug.yaml"
METRIC_KEYS = {"num_test_clips", "video_tokens_per_clip", "chance/R@1", "chance/R@5", "num_test_captions",
               "num_probe_train_clips",
               *(f"{d}/{s}" for d in ("t2v", "v2t", "v2a", "a2v") for s in ("R@1", "R@5", "median_rank")),
               *(f"probe/{k}{s}" for k in ("digit", "color", "direction", "pitch") for s in ("", "_chance", "_train"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The debug config from a fresh clone: two steps on the 24-clip corpus it generates under run_dir/corpus."""
    run = tmp_path_factory.mktemp("vatt") / "run"
    result = main(["--config", CONFIG, f"run_dir={run}", "train.steps=2", "train.save_every=1", "train.log_every=1",
                   "train.eval_every=2"])
    return run, result


def _on_corpus(run: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"run_dir={run_dir}", "demo_corpus_clips=0",
            f"data.manifest={run / 'corpus' / 'manifest.jsonl'}", "eval.probe_train_clips=8", *extra]


def test_debug_config_trains_exports_and_evaluates(trained):
    run, result = trained
    assert result["steps"] == 2 and (run / "corpus" / "manifest.jsonl").is_file()
    export = run / "export"
    assert {"config.json", "model.safetensors", "text.model", "clip_config.json", "eval.json"} <= {
        p.name for p in export.iterdir()}
    report = json.loads((export / "eval.json").read_text())
    assert report["steps"] == 2 and report["video_switches"] == {} and set(report["metrics"]) == METRIC_KEYS
    assert report["metrics"]["chance/R@1"] == 1 / report["metrics"]["num_test_clips"]
    assert 0 <= report["metrics"]["probe/direction"] <= 1 and report["metrics"] == result["metrics"]
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert any("val/t2v/R@1" in r and "val/loss" in r for r in rows) and any("test/t2v/R@1" in r for r in rows)
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"
    model, tokenizer, clip_cfg = load_vatt_export(export)
    assert (clip_cfg.fps, clip_cfg.num_frames, clip_cfg.size, clip_cfg.sample_rate) == (8, 8, 32, 16000)
    assert model.config.text_config.vocab_size == tokenizer.codebook_size and not model.training
    assert isinstance(AutoModel.from_pretrained(export), VATTModel)
    ids = torch.tensor([tokenizer.encode("a red digit")])
    assert model.embed_text(ids).shape == (1, model.config.vt_dim)


def test_resume_continues_exactly(trained, tmp_path):
    run, _ = trained
    main(_on_corpus(run, tmp_path / "full", "train.steps=4", "train.log_every=1", "train.save_every=2"))
    cut = _on_corpus(run, tmp_path / "cut", "train.steps=4", "train.log_every=1", "train.save_every=2")
    assert main([*cut, "train.stop_at=2"]) == {"steps": 2}
    assert not (tmp_path / "cut" / "export").exists()                     # an interrupted run does not export
    with pytest.raises(FileExistsError, match="--resume"):
        main(cut)
    main(["--resume", *cut])
    full = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "full") if "train/loss" in r}
    resumed = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "cut") if "train/loss" in r}
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4]
    for step in full:                                                     # DropToken's draws included
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
    assert (tmp_path / "cut" / "export" / "eval.json").is_file()


def test_eval_only_applies_token_reduction_switches(trained, tmp_path):
    run, result = trained
    out = main(["--config", CONFIG, f"run_dir={run}", "--eval-only", "model.video.tome_r=4",
                f"eval.out={tmp_path / 'tome.json'}"])
    report = json.loads((tmp_path / "tome.json").read_text())
    assert report["video_switches"] == {"tome_r": 4} and set(report["metrics"]) == METRIC_KEYS
    # 8 frames of 32x32 in 2x4x4 tubelets: 256 tokens, 4 merged in each of the 2 blocks
    assert result["metrics"]["video_tokens_per_clip"] == 256 and out["metrics"]["video_tokens_per_clip"] == 248
    with pytest.raises(ValueError, match="set eval.out"):
        main(["--config", CONFIG, f"run_dir={run}", "--eval-only", "model.video.tome_r=4"])
    with pytest.raises(ValueError, match="token-reduction switches"):
        main(["--config", CONFIG, f"run_dir={run}", "--eval-only", "model.video.hidden_size=64",
              f"eval.out={tmp_path / 'x.json'}"])


def test_fine_tuning_from_the_export_adds_vtm(trained, tmp_path):
    run, _ = trained
    result = main(_on_corpus(run, tmp_path / "ft", f"model.init_from={run / 'export'}", "model.video.tome_r=2",
                             "model.video.merge=vtm", "model.overrides.droptoken=0", "train.steps=1"))
    model = VATTModel.from_pretrained(result["export_dir"])
    assert model.config.video_config.merge == "vtm" and model.video_model.saliency is not None
    assert model.config.droptoken == 0 and result["metrics"]["video_tokens_per_clip"] == 252
    with pytest.raises(ValueError, match="only model.video's token-reduction switches"):
        main(_on_corpus(run, tmp_path / "bad", f"model.init_from={run / 'export'}", "model.audio.num_hidden_layers=1"))


def test_token_efficiency_bench_measures_the_export(trained, tmp_path):
    run, _ = trained
    spec = importlib.util.spec_from_file_location("token_efficiency", ROOT / "bench" / "token_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--model", str(run / "export"), "--corpus", str(run / "corpus"),
                         "--rows", "rlt", "tome", "vtm", "stts", "--in-process", "--work", str(tmp_path / "work"),
                         "--out", str(tmp_path / "out"), "--reps", "1"])
    names = [r["name"] for r in result["rows"]]
    assert names == ["plain (joint)", "RLT tau=0.05", "ToMe r=2", "VTM r=2", "STTS frames 0.5", "STTS regions 0.5",
                     "STTS frames 0.5 + regions 0.5"]
    rows = {r["name"]: r for r in result["rows"]}
    assert all("error" not in r for r in rows.values()), [r.get("error") for r in rows.values()]
    plain = rows["plain (joint)"]
    assert plain["tokens_first_block"] == 256 and plain["infer_speedup"] == 1 and 0 <= plain["accuracy"] <= 1
    assert all(0 <= plain[f"probe_{k}_train"] <= 1 for k in ("digit", "color", "direction"))
    assert rows["ToMe r=2"]["tokens_last_block"] == 254 and rows["STTS frames 0.5"]["tokens_first_block"] == 128
    assert rows["STTS frames 0.5"]["compute_saving"] > 0.4 and rows["RLT tau=0.05"]["token_saving"] > 0.3
    assert rows["STTS frames 0.5 + regions 0.5"]["tokens_first_block"] == 64           # half the frames, half of each
    assert {"rlt", "tome", "stts", "vtm"} <= set(result["targets"]["corpus"])
    for name in ("token_efficiency.json", "token_efficiency.md", "token_efficiency.png"):
        assert (tmp_path / "out" / name).is_file()

    # The timed training steps do not leak into the accuracy: each row scores the export as saved (with the row's
    # switches), the same clips giving the same probe accuracy as an evaluation of the export itself.
    from lm.vatt_evaluation import evaluate_vatt
    from mmtok.data.av_clips import AVClips
    from mmtok.datasets.moving_digits import probe_labels

    corpus = run / "corpus"
    _, _, clip_cfg = load_vatt_export(run / "export")
    test = AVClips.load(corpus / "manifest.jsonl", cfg=clip_cfg, split="test", limit=16)
    train = AVClips.load(corpus / "manifest.jsonl", cfg=clip_cfg, split="train", limit=32)
    labels = {k: v for k, v in probe_labels(corpus).items() if k in bench.VIDEO_LABELS}
    for name, switches in (("plain (joint)", None), ("ToMe r=2", {"tome_r": 2})):
        model, _, _ = load_vatt_export(run / "export", video_switches=switches)
        metrics = evaluate_vatt(model, test, probe_train=train, labels=labels, batch_size=8)
        assert rows[name]["probe_direction"] == pytest.approx(metrics["probe/direction"])
        assert rows[name]["probe_digit"] == pytest.approx(metrics["probe/digit"])
    # A training-free STTS row's new scorer starts the same in every run, so the row reads the same twice.
    again = bench.main(["--quick", "--model", str(run / "export"), "--corpus", str(run / "corpus"), "--rows", "stts",
                        "--in-process", "--work", str(tmp_path / "work2"), "--out", str(tmp_path / "out2"),
                        "--reps", "1"])
    again_rows = {r["name"]: r for r in again["rows"]}
    for name in ("STTS frames 0.5", "STTS frames 0.5 + regions 0.5"):
        assert again_rows[name]["accuracy"] == rows[name]["accuracy"]
        assert again_rows[name]["t2v_r1"] == rows[name]["t2v_r1"]


def test_token_efficiency_finetuned_rows_are_measured_against_their_control():
    """Fine-tuned rows gain the control's extra steps too: their accuracy change is against the plain model
    fine-tuned the same steps; tokens and speed stay against the plain model."""
    spec = importlib.util.spec_from_file_location("token_efficiency", ROOT / "bench" / "token_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(rlt=[0.05], merge_r=[4], stts_frames=[0.8], stts_regions=[], stts_both=[(0.8, 0.5)],
                              finetune_steps=10)
    names = [r["name"] for r in bench.method_rows(args)]
    assert names[-6:] == ["plain (joint) (ft)", "RLT tau=0.05 (ft)", "ToMe r=4 (ft)", "VTM r=4 (ft)",
                          "STTS frames 0.8 (ft)", "STTS frames 0.8 + regions 0.5 (ft)"]
    assert bench.parse_pair("0.9:0.7") == (0.9, 0.7)
    with pytest.raises(argparse.ArgumentTypeError, match="FRAMES:REGIONS"):
        bench.parse_pair("0.9")

    def row(name, accuracy, tokens, finetuned=False):
        return {"corpus": "c", "name": name, "family": name.split()[0].lower(), "accuracy": accuracy, "tokens_first_block": tokens,
                "gflops_per_clip": tokens, "infer_clips_per_s": 100 / tokens, "train_clips_per_s": 10 / tokens,
                **({"finetuned": True} if finetuned else {})}
    rows = [row("plain (joint)", 0.80, 80), row("RLT tau=0.05", 0.78, 40),
            row("plain (joint) (ft)", 0.90, 80, True), row("RLT tau=0.05 (ft)", 0.897, 40, True)]
    bench.relative(rows)
    free, control, tuned = rows[1], rows[2], rows[3]
    assert free["accuracy_change_points"] == pytest.approx(-2) and free["accuracy_baseline"] == "plain (joint)"
    assert tuned["accuracy_change_points"] == pytest.approx(-0.3) and tuned["accuracy_baseline"] == "plain (joint) (ft)"
    assert tuned["token_saving"] == pytest.approx(0.5) and control["token_saving"] == 0
    check = bench.check_targets(rows, "c")["rlt"]                  # the free row loses 2 points, the tuned 0.3
    assert check["row"] == "RLT tau=0.05 (ft)" and check["met"]

    # VTM (a learned merge) is checked on its fine-tuned rows against ToMe fine-tuned alike, once those exist.
    def merge(name, accuracy):
        return {"corpus": "c", "name": name, "family": name.split()[0].lower(), "r": 8, "accuracy": accuracy,
                "infer_speedup": 1.5, "accuracy_change_points": 0.0, "finetuned": "(ft)" in name}
    free = [merge("ToMe r=8", 0.90), merge("VTM r=8", 0.89)]                 # the untrained scorer loses
    tuned = [merge("ToMe r=8 (ft)", 0.95), merge("VTM r=8 (ft)", 0.96)]
    assert not bench.check_targets(free, "c")["vtm"]["met"]
    vtm = bench.check_targets(free + tuned, "c")["vtm"]
    assert vtm["met"] and vtm["checked_on"] == "fine-tuned" and len(vtm["pairs"]) == 2
    tuned[1]["accuracy"] = 0.94
    assert not bench.check_targets(free + tuned, "c")["vtm"]["met"]


def test_token_efficiency_refuses_to_reuse_a_model_of_other_steps(tmp_path):
    spec = importlib.util.spec_from_file_location("token_efficiency", ROOT / "bench" / "token_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "eval.json").write_text(json.dumps({"steps": 500}))
    args = argparse.Namespace(quick=True, corpus=[tmp_path], threads=1)
    assert bench.train_model(tmp_path / "run", ["train.steps=500"], args) == export     # same steps: reused
    with pytest.raises(SystemExit, match="trained 500 steps, not the 1500 asked for"):
        bench.train_model(tmp_path / "run", ["train.steps=1500"], args)


def test_bad_configs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        main(["--config", CONFIG, f"run_dir={tmp_path}", "demo_corpus_clips=0"])
    with pytest.raises(Exception, match="nope"):
        main(["--config", CONFIG, f"run_dir={tmp_path}", "train.nope=1"])
