"""End-to-end tests of recipes/pretrain.py on the debug LM and synthetic task sequences.

Every run is a real subprocess (plain python, or `accelerate launch`), as a user starts it. One uninterrupted
single-process run (module fixture) is the reference: the loss falls and its export loads; a run killed with
SIGKILL and resumed logs exactly the reference losses; 2-process DDP and DeepSpeed ZeRO-2 (1 and 2 processes) log the
reference losses within float tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmtok.multimodal import register_tokenizer_class

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pretrain.py"
CONFIG = ROOT / "recipes" / "configs" / "pretrain_debug.yaml"
ACCEL = ROOT / "recipes" / "configs" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")
# A short schedule: 12 optimizer steps, checkpoints every 4, evaluation every 6.
OVERRIDES = ["train.steps=12", "train.save_every=4", "train.eval_every=6", "train.log_every=1"]


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "MMTOK_PROGRESS": "0", "OMP_NUM_THREADS": "1",
         "PYTHONPATH": str(ROOT)}
    e.update(extra)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_plain(run_dir: Path, *extra: str, resume: bool = False) -> None:
    cmd = [sys.executable, str(RECIPE), "--config", str(CONFIG), f"run_dir={run_dir}", *OVERRIDES, *extra]
    if resume:
        cmd.insert(2, "--resume")
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def run_launch(run_dir: Path, accelerate_config: str, num_processes: int, *extra: str, **env_extra: str) -> None:
    # The DeepSpeed launch files run as a user types them (accelerate refuses a mixed_precision beside a DeepSpeed
    # JSON, which the GPU check found); the others get fp32 on the command line, as on a CPU machine.
    precision = [] if accelerate_config.startswith("deepspeed") else ["--mixed_precision", "no"]
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ACCEL / accelerate_config),
           "--num_processes", str(num_processes), "--main_process_port", str(free_port()),
           *precision, str(RECIPE), "--config", str(CONFIG), f"run_dir={run_dir}", *OVERRIDES, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(**env_extra), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@register_tokenizer_class
class CodebookStub:
    """A tokenizer that only declares its code space (what the vocabulary and the bundle need), saveable."""

    def __init__(self, modality: str, codebook_size: int, num_codebooks: int = 1):
        self.modality, self.codebook_size, self.num_codebooks, self.frame_rate = (modality, codebook_size,
                                                                                  num_codebooks, None)

    def encode(self, x):
        raise NotImplementedError("a stub: the test trains on pre-tokenized shards")

    decode = encode

    def save_pretrained(self, d) -> None:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "stub.json").write_text(json.dumps([self.modality, self.codebook_size, self.num_codebooks]))

    @classmethod
    def from_pretrained(cls, d, **kwargs) -> "CodebookStub":
        return cls(*json.loads((Path(d) / "stub.json").read_text()))


def write_token_shards(tmp_path: Path, rows: list, vocab, latent_hw=None) -> tuple[Path, Path]:
    """One token shard of ``rows`` recorded against ``vocab``, and a stub tokenizer bundle beside it: the folders
    ``data.shards`` and ``data.bundle`` take."""
    from mmtok.data.shards import DATASET_FILE, shard_name, write_shard
    from mmtok.multimodal import MultimodalTokenizer

    tokens = tmp_path / "tokens"
    write_shard(tokens / "shards" / f"{shard_name(0, 1)}.arrow", rows)
    (tokens / DATASET_FILE).write_text(json.dumps({
        "shards": [{"file": f"{shard_name(0, 1)}.arrow", "num_records": len(rows), "num_rows": len(rows)}],
        "vocab_fingerprint": vocab.fingerprint, "vocab_layout": vocab.describe(),
        "audio_pattern": "frame_major", "num_audio_levels": 2}))
    bundle = tmp_path / "bundle"
    MultimodalTokenizer(text=CodebookStub("text", 64), video=CodebookStub("video", 32),
                        audio=CodebookStub("audio", 16, 2), vocab=vocab, latent_hw=latent_hw).save_pretrained(bundle)
    return tokens, bundle


def metric(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain") / "reference"
    run_plain(run_dir)
    return run_dir


def test_pretrain_end_to_end_loss_falls_and_export_loads(reference):
    loss = metric(reference, "train/loss")
    assert sorted(loss) == list(range(1, 13))
    assert sum(loss[s] for s in (10, 11, 12)) / 3 < loss[1] - 0.3
    evals = metric(reference, "eval/loss")
    assert set(evals) == {6, 12} and evals[12] < evals[6]
    for key in ("eval/loss_t2v", "eval/loss_v2a", "eval/loss_v2t",
                "eval/nll_text", "eval/nll_video", "eval/nll_audio"):
        assert 12 in metric(reference, key), key
    assert (reference / "config.yaml").is_file() and (reference / "tensorboard").is_dir()
    ckpts = reference / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000012"
    assert not list(ckpts.glob(".*tmp*"))  # no half-written checkpoint left behind

    import lm  # noqa: F401  (registers mmlm with the Auto classes)
    from transformers import AutoModelForCausalLM

    from mmtok.vocab import UnifiedVocabulary

    export = reference / "export"
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "vocab.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(export)
    vocab = UnifiedVocabulary.from_json(export / "vocab.json")  # synthetic data: a vocabulary, no tokenizers
    assert model.config.vocab_fingerprint == vocab.fingerprint
    model.check_vocabulary(vocab)
    prompt = torch.tensor([[vocab.bos_id, vocab.token_id("<t2v>")]])
    out = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, 7)


def test_kill_9_then_resume_gives_the_uninterrupted_losses(reference, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(RECIPE), "--config", str(CONFIG), f"run_dir={run_dir}", *OVERRIDES]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file() and pointer.read_text().strip() >= "step_00000004":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-run"
    killed_at = int(pointer.read_text().strip().removeprefix("step_"))
    assert 4 <= killed_at < 12

    run_plain(run_dir, resume=True)
    assert metric(run_dir, "train/loss") == metric(reference, "train/loss")  # exactly, every step
    assert metric(run_dir, "eval/loss") == metric(reference, "eval/loss")


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_single_process(reference, tmp_path):
    run_dir = tmp_path / "ddp"
    # Trap: `--cpu --num_processes 2` starts one process; the multi-GPU launcher with ACCELERATE_USE_CPU starts two.
    run_launch(run_dir, "cpu_ddp.yaml", 2, "data.batch_size=2", ACCELERATE_USE_CPU="true")
    ref, got = metric(reference, "train/loss"), metric(run_dir, "train/loss")
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-4)
    assert metric(run_dir, "eval/loss")[12] == pytest.approx(metric(reference, "eval/loss")[12], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_deepspeed_zero2_matches_single_process(reference, tmp_path, num_processes):
    pytest.importorskip("deepspeed")
    run_dir = tmp_path / f"zero2_{num_processes}"
    run_launch(run_dir, "deepspeed_zero2.yaml", num_processes, f"data.batch_size={4 // num_processes}")
    ref, got = metric(reference, "train/loss"), metric(run_dir, "train/loss")
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-4)
    assert metric(run_dir, "eval/loss")[12] == pytest.approx(metric(reference, "eval/loss")[12], abs=1e-4)
    assert (run_dir / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero3_trains_and_exports_whole_weights(reference, tmp_path):
    """ZeRO-3 shards the parameters from construction on (``zero3_init_flag``), so its initial weights are drawn in
    another order than a plain run's: the losses start near the reference and fall, and the export gathers every
    weight into a folder that loads strictly."""
    pytest.importorskip("deepspeed")
    from lm import MMLMForCausalLM

    run_dir = tmp_path / "zero3"
    run_launch(run_dir, "deepspeed_zero3.yaml", 1)
    ref, got = metric(reference, "train/loss"), metric(run_dir, "train/loss")
    assert sorted(got) == sorted(ref)
    assert got[1] == pytest.approx(ref[1], abs=0.2)
    assert sum(got[s] for s in (10, 11, 12)) < sum(got[s] for s in (1, 2, 3))
    exported = MMLMForCausalLM.from_pretrained(run_dir / "export")   # strict: a missing or empty shard raises
    plain = MMLMForCausalLM.from_pretrained(reference / "export")
    for (name, p), (_, q) in zip(exported.named_parameters(), plain.named_parameters()):
        assert p.shape == q.shape and p.abs().sum() > 0, name


def test_bad_config_is_a_clear_error(tmp_path):
    from accelerate.state import AcceleratorState

    from recipes.pretrain import main

    with pytest.raises(Exception, match="stepz"):
        main(["--config", str(CONFIG), f"run_dir={tmp_path}", "train.stepz=3"])
    with pytest.raises(ValueError, match="data.source"):
        main(["--config", str(CONFIG), f"run_dir={tmp_path}", "data.source=webdataset"])
    try:
        with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
            main(["--config", str(CONFIG), f"run_dir={tmp_path}", "--resume"])
    finally:
        AcceleratorState._reset_state(True)
    for bad in (["alignment.weight=0.5", "alignment.every=0"], ["alignment.only=true", "alignment.every=2"]):
        try:
            with pytest.raises(ValueError, match="alignment.every"):
                main(["--config", str(CONFIG), f"run_dir={tmp_path / 'every'}", *bad])
        finally:
            AcceleratorState._reset_state(True)


def test_fresh_run_into_a_used_run_dir_is_refused(reference):
    from recipes.pretrain import main

    with pytest.raises(FileExistsError, match="--resume"):
        main(["--config", str(CONFIG), f"run_dir={reference}"])


def test_pretrain_on_token_shards_through_the_loader(tmp_path):
    """data.source=shards: the task-mixture loader over tiny token shards, a bundle folder, export beside it."""
    pytest.importorskip("mmtok.data.loader")
    from accelerate.state import AcceleratorState

    from mmtok.data.shards import make_row
    from mmtok.interface import CodeSpec
    from mmtok.multimodal import MultimodalTokenizer
    from mmtok.vocab import UnifiedVocabulary
    from recipes.common import read_metrics
    from recipes.pretrain import main

    vocab = UnifiedVocabulary(text=CodeSpec("text", 64), video=CodeSpec("video", 32), audio=CodeSpec("audio", 16, 2))
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(48):
        caption = [(i * 5 + k) % 64 for k in range(4)]
        rows.append(make_row(id=f"c{i:03d}", split="validation" if i % 6 == 0 else "train", captions=[f"clip {i}"],
                             text_ids=[caption], video=torch.randint(0, 32, (2, 2, 2), generator=g),
                             audio=torch.randint(0, 16, (2, 4), generator=g), num_frames=5, num_samples=100,
                             meta={}))
    tokens, bundle = write_token_shards(tmp_path, rows, vocab)

    run_dir = tmp_path / "run"
    try:
        metrics = main(["--config", str(CONFIG), f"run_dir={run_dir}", "data.source=shards", f"data.shards={tokens}",
                        f"data.bundle={bundle}", "data.tasks={t2v: 1.0, v2a: 1.0}", "data.tasks.v2t=0", "data.eval_batches=1",
                        "train.steps=4", "train.eval_every=4", "train.save_every=100"])
    finally:
        AcceleratorState._reset_state(True)
    assert {"eval/loss_t2v", "eval/loss_v2a", "eval/nll_video", "eval/nll_audio"} <= set(metrics)
    assert "eval/loss_v2t" not in metrics  # weight 0 removes a task the YAML file lists
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2, 3, 4]
    import lm  # noqa: F401
    from transformers import AutoModelForCausalLM

    export = run_dir / "export"
    tokenizer = MultimodalTokenizer.from_pretrained(export)
    assert tokenizer.vocab.fingerprint == vocab.fingerprint
    AutoModelForCausalLM.from_pretrained(export).check_vocabulary(tokenizer)


def test_pretrain_with_run_length_video_conditions(tmp_path):
    """data.video_runs=true: two debug steps on shards of mostly static clips; the vocabulary gets run tokens, the
    exported bundle keeps the setting (its prompts fold like the training data) and matches the model."""
    from accelerate.state import AcceleratorState

    from mmtok.data.shards import make_row
    from mmtok.interface import CodeSpec
    from mmtok.multimodal import MultimodalTokenizer
    from mmtok.vocab import UnifiedVocabulary
    from recipes.common import read_metrics
    from recipes.pretrain import main

    vocab = UnifiedVocabulary(text=CodeSpec("text", 64), video=CodeSpec("video", 32), audio=CodeSpec("audio", 16, 2))
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(24):
        video = torch.randint(0, 32, (1, 2, 2), generator=g).repeat(3, 1, 1)  # [3, 2, 2]: a still background
        video[1 + i % 2, i % 2, 0] = (video[0, 0, 0] + 1) % 32               # one cell changes
        rows.append(make_row(id=f"c{i:03d}", split="validation" if i % 6 == 0 else "train", captions=[f"clip {i}"],
                             text_ids=[[i % 64, 1]], video=video, audio=torch.randint(0, 16, (2, 4), generator=g),
                             num_frames=9, num_samples=100, meta={}))
    tokens, bundle = write_token_shards(tmp_path, rows, vocab, latent_hw=(2, 2))

    run_dir = tmp_path / "run"
    try:
        metrics = main(["--config", str(CONFIG), f"run_dir={run_dir}", "data.source=shards", f"data.shards={tokens}",
                        f"data.bundle={bundle}", "data.tasks={v2a: 1.0, vcont: 1.0}", "data.tasks.t2v=0",
                        "data.tasks.v2t=0", "data.eval_batches=1", "data.video_runs=true",
                        "data.video_frame_loss_weights=[1.0,2.0]", "model.overrides={video_grid: [3, 2, 2]}",
                        "train.steps=2", "train.eval_every=2", "train.save_every=100"])
    finally:
        AcceleratorState._reset_state(True)
    assert {"eval/loss_v2a", "eval/loss_vcont"} <= set(metrics)
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2]
    import lm  # noqa: F401
    from transformers import AutoModelForCausalLM

    export = run_dir / "export"
    tokenizer = MultimodalTokenizer.from_pretrained(export)
    assert tokenizer.video_runs and tokenizer.vocab.max_video_run == 4  # runs up to a whole 2x2 latent frame
    assert tokenizer.vocab.without_video_runs() == vocab
    model = AutoModelForCausalLM.from_pretrained(export)
    model.check_vocabulary(tokenizer)
    r = tokenizer.vocab.range_of("video_run")
    assert model.config.modality_ranges["video_run"] == [r.start, r.stop] and model.config.vocab_size == r.stop
    assert model.config.video_grid == [3, 2, 2]                        # its positions count the runs' cells
    # the exported bundle prompts in the form the model trained on: rows' still frames fold into <run_4>
    prompt = tokenizer.build_prompt("v2a", video=torch.zeros(3, 2, 2, dtype=torch.long))
    assert (prompt == tokenizer.vocab.run_token_id(4)).sum() == 2


def test_video_frame_loss_weights_count_the_cells_of_run_tokens():
    from recipes.pretrain import DataConfig, load_bundle, weigh_video_frames

    vocab, _ = load_bundle(DataConfig(video_runs=True))  # synthetic data: runs up to a whole 3x3 latent frame
    assert vocab.max_video_run == 9 and load_bundle(DataConfig())[0] == vocab.without_video_runs()

    # <bos> <v2a> <bov> | frame 0: 2 codes, frame 1: one run of 2 cells | <eov> <boa> audio <eoa> <eos>
    # vcont-like output after it would start at frame 2: here a second segment of 2 codes is an output video
    ids = torch.tensor([[1, 5, 7, 100, 101, 250, 8, 7, 102, 103, 8, 2]])  # 250 = <run_2> of runs [249, 251)
    mask = torch.zeros_like(ids)
    mask[0, 8:] = 1
    batch = {"input_ids": ids, "loss_mask": mask, "prefix_len": torch.tensor([8])}
    out = weigh_video_frames(batch, [1.0, 1.0, 5.0], video_range=(100, 200), bos_id=1, cells_per_frame=2,
                             run_range=(249, 251))
    assert out["loss_mask"][0, 8:].tolist() == [5, 5, 1, 1]             # the output codes are latent frame 2
    plain = weigh_video_frames(batch, [1.0, 1.0, 5.0], video_range=(100, 200), bos_id=1, cells_per_frame=2)
    assert plain["loss_mask"][0, 8:].tolist() == [1, 1, 1, 1]           # without the run range: frame 1 (wrong)


def test_alignment_weight_adds_a_falling_contrastive_loss_and_the_head_is_exported(tmp_path):
    run_dir = tmp_path / "align"
    run_plain(run_dir, "alignment.weight=0.5", "alignment.head.droptoken=0.25")
    align = metric(run_dir, "train/align_loss")
    assert sorted(align) == list(range(1, 13))
    assert sum(align[s] for s in (10, 11, 12)) / 3 < sum(align[s] for s in (1, 2, 3)) / 3
    assert 12 in metric(run_dir, "train/loss")  # the LM keeps training beside the head

    import lm  # noqa: F401
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    assert model.config.alignment is not None and hasattr(model, "alignment")
    vocab_video = model.config.modality_ranges["video"]
    video = torch.randint(vocab_video[0], vocab_video[1], (3, 10))
    emb = model.embed_video(video)
    assert emb.shape == (3, model.config.alignment["vt_dim"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_alignment_every_n_steps_trains_the_head_on_those_steps_only(tmp_path):
    run_dir = tmp_path / "align_every"
    run_plain(run_dir, "alignment.weight=0.5", "alignment.every=3")
    assert sorted(metric(run_dir, "train/align_loss")) == [1, 4, 7, 10]  # steps 0, 3, 6, 9 (0-based) and their logs
    assert sorted(metric(run_dir, "train/loss")) == list(range(1, 13))


def test_alignment_every_n_steps_under_two_process_ddp(tmp_path):
    # the skipped steps still give DDP a (zero) gradient for every head parameter, or the reducer would stall
    run_dir = tmp_path / "align_every_ddp"
    run_launch(run_dir, "cpu_ddp.yaml", 2, "data.batch_size=2", "alignment.weight=0.5", "alignment.every=2",
               ACCELERATE_USE_CPU="true")
    assert sorted(metric(run_dir, "train/align_loss")) == [1, 3, 5, 7, 9, 11]
    assert (run_dir / "export" / "model.safetensors").is_file()


def test_alignment_only_trains_the_head_on_a_frozen_lm(reference, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "align_only"
    run_plain(run_dir, "alignment.only=true", f"model.init_from={reference / 'export'}")
    assert 12 in metric(run_dir, "train/align_loss")
    assert not metric(run_dir, "train/loss")  # the LM does not train, so it logs no LM loss
    before = load_file(reference / "export" / "model.safetensors")
    after = load_file(run_dir / "export" / "model.safetensors")
    assert any(k.startswith("alignment.") for k in after) and not any(k.startswith("alignment.") for k in before)
    for key, value in before.items():  # every LM weight exactly as it was
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


def test_video_frame_loss_weights_weigh_the_targets_of_each_latent_frame():
    from recipes.pretrain import weigh_video_frames

    # <bos> <t2v> <bot> text <eot> <bov> | 3 latent frames of 2 cells | <eov> <eos>; video ids are [100, 200)
    ids = torch.tensor([[1, 5, 6, 20, 21, 7, 8, 100, 101, 102, 103, 104, 105, 9, 2, 0]])
    mask = torch.zeros_like(ids)
    mask[0, 8:15] = 1  # the output: video from its first token on, then the closing boundary and <eos>
    batch = {"input_ids": ids, "loss_mask": mask, "prefix_len": torch.tensor([8])}
    out = weigh_video_frames(batch, [1.0, 4.0], video_range=(100, 200), bos_id=1, cells_per_frame=2)
    # frame 0 = ids 100, 101 (one of them in the prefix), frame 1 = 102, 103 (weight 4), frame 2 past the list (1)
    assert out["loss_mask"][0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 4, 1, 1, 1, 1, 0]
    assert out["loss_mask"].dtype == torch.float32 and batch["loss_mask"].dtype == torch.long  # input untouched
    with pytest.raises(ValueError, match="must be >= 0"):
        weigh_video_frames(batch, [1.0, -1.0], video_range=(100, 200), bos_id=1, cells_per_frame=2)


def test_pretrain_with_video_frame_loss_weights_runs_and_the_loss_falls(tmp_path):
    run_dir = tmp_path / "weighted"
    run_plain(run_dir, "data.video_frame_loss_weights=[1.0,3.0]")
    losses = metric(run_dir, "train/loss")
    assert losses[max(losses)] < losses[min(losses)]


def test_video_input_noise_replaces_only_target_video_inputs_and_keeps_clean_labels():
    from recipes.pretrain import noise_video_inputs

    # <bos> <t2v> <bot> text <eot> <bov> | video (ids [100, 200)) | <eov> <eos>; the caption's ids are < 100
    ids = torch.tensor([[1, 5, 6, 20, 21, 7, 8] + list(range(100, 140)) + [9, 2]])
    mask = torch.zeros_like(ids)
    mask[0, 8:] = 1  # the output from the first video code on (the <bov> at 7 is the prefix's last token)
    batch = {"input_ids": ids, "loss_mask": mask, "prefix_len": torch.tensor([8])}
    out = noise_video_inputs(batch, 0.5, video_range=(100, 200), generator=torch.Generator().manual_seed(0))
    noisy, changed = out["model_input_ids"], out["model_input_ids"] != ids
    assert changed.any() and not changed[0, :8].any() and not changed[0, -2:].any()  # prefix and boundaries kept
    assert ((noisy[changed] >= 100) & (noisy[changed] < 200)).all()                  # a random video code
    assert torch.equal(out["input_ids"], ids)                                        # the batch itself untouched
    assert torch.equal(out["labels"], ids.masked_fill(mask == 0, -100))              # clean targets
    again = noise_video_inputs(batch, 0.5, video_range=(100, 200), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["model_input_ids"], noisy)                              # a function of the seed
    with pytest.raises(ValueError, match="video_input_noise"):
        noise_video_inputs(batch, 1.0, video_range=(100, 200), generator=torch.Generator())


def test_pretrain_with_video_input_noise_trains_on_clean_targets_and_the_loss_falls(tmp_path):
    run_dir = tmp_path / "noised"
    run_plain(run_dir, "data.video_input_noise=0.2")
    losses = metric(run_dir, "train/loss")
    assert losses[max(losses)] < losses[min(losses)]
    # evaluation reads clean inputs: its losses exist and are finite
    assert all(v == v for v in metric(run_dir, "eval/loss").values())


# --------------------------------------------------------------------------------------- resume: safe and exact
class _RunsCode:
    """Unpickling this creates ``witness``: a stand-in for a checkpoint file crafted to run a shell command."""

    def __init__(self, witness: Path):
        self.witness = str(witness)

    def __reduce__(self):
        return (os.system, (f"touch {self.witness}",))


def _resume_copy(reference: Path, dest: Path) -> Path:
    """A copy of the reference run as if it had stopped after its step-8 checkpoint."""
    import shutil

    shutil.copytree(reference, dest)
    ckpts = dest / "checkpoints"
    shutil.rmtree(ckpts / "step_00000012")
    (ckpts / "latest").write_text("step_00000008")
    return ckpts / "step_00000008"


def _resume(run_dir: Path, *extra: str) -> None:
    from accelerate.state import AcceleratorState

    from recipes.pretrain import main

    try:
        main(["--config", str(CONFIG), f"run_dir={run_dir}", *OVERRIDES, "--resume", *extra])
    finally:
        AcceleratorState._reset_state(True)


def _assert_same_losses(run_dir: Path, reference: Path) -> None:
    got, ref = metric(run_dir, "train/loss"), metric(reference, "train/loss")
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6)


def test_resume_never_unpickles_code_from_a_checkpoint(reference, tmp_path):
    import pickle

    from recipes.common import CheckpointError

    assert (reference / "checkpoints" / "step_00000008").is_dir(), "the reference keeps its step-8 checkpoint"
    assert not list((reference / "checkpoints").glob("*/custom_checkpoint_*.pkl"))  # the scheduler is JSON now
    witness = tmp_path / "pwned"
    # A planted custom-object pickle is refused, naming it; without it the run resumes exactly.
    ckpt = _resume_copy(reference, tmp_path / "planted")
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_RunsCode(witness)))
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl.*never loads"):
        _resume(tmp_path / "planted")
    (ckpt / "custom_checkpoint_0.pkl").unlink()
    _resume(tmp_path / "planted")
    _assert_same_losses(tmp_path / "planted", reference)
    # A hostile random-state pickle is refused with an error naming it.
    ckpt = _resume_copy(reference, tmp_path / "hostile")
    (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps(_RunsCode(witness)))
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        _resume(tmp_path / "hostile")
    assert not witness.exists()


def test_resume_restores_every_state_or_names_the_file(reference, tmp_path):
    from recipes.common import CheckpointError

    ckpt = _resume_copy(reference, tmp_path / "no_rng")
    (ckpt / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match="missing random_states_0.pkl.*--allow-inexact-resume"):
        _resume(tmp_path / "no_rng")
    with pytest.warns(UserWarning, match="no longer reproducible"):
        _resume(tmp_path / "no_rng", "--allow-inexact-resume")
    assert sorted(metric(tmp_path / "no_rng", "train/loss")) == list(range(1, 13))

    ckpt = _resume_copy(reference, tmp_path / "no_weights")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        _resume(tmp_path / "no_weights")
    ckpt = _resume_copy(reference, tmp_path / "cut_weights")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is damaged"):
        _resume(tmp_path / "cut_weights")

    # Without the `latest` pointer the newest complete checkpoint is used, and the losses are exact.
    _resume_copy(reference, tmp_path / "no_pointer")
    (tmp_path / "no_pointer" / "checkpoints" / "latest").unlink()
    with pytest.warns(UserWarning, match="pointer .* is missing; using the newest complete checkpoint step_00000008"):
        _resume(tmp_path / "no_pointer")
    _assert_same_losses(tmp_path / "no_pointer", reference)


def test_ema_weights_are_exported_and_survive_a_resume(reference, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "ema"
    run_plain(run_dir, "train.ema_decay=0.9")
    # the training losses do not depend on the EMA; the evaluations are the EMA model's
    assert metric(run_dir, "train/loss") == metric(reference, "train/loss")
    assert metric(run_dir, "eval/loss") != metric(reference, "eval/loss")
    ema = load_file(run_dir / "export" / "model.safetensors")
    last = load_file(run_dir / "checkpoints" / "step_00000012" / "model.safetensors")
    plain = load_file(reference / "export" / "model.safetensors")
    assert set(ema) == set(plain)
    assert all(torch.equal(last[k], plain[k]) for k in plain)          # the run's own weights are the reference's
    assert not all(torch.equal(ema[k], plain[k]) for k in plain)      # ... and the export is their average
    assert (run_dir / "checkpoints" / "step_00000012" / "ema.pt").is_file()

    # resuming from step 8 restores the average too: the same export to the last bit
    (run_dir / "checkpoints" / "latest").write_text("step_00000008")
    run_plain(run_dir, "train.ema_decay=0.9", resume=True)
    again = load_file(run_dir / "export" / "model.safetensors")
    assert all(torch.equal(again[k], ema[k]) for k in ema)
