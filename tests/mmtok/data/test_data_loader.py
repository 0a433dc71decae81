"""Task-mixture loader: determinism, resume from a step, disjoint rank shards, mixture, grouping, streaming."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from mmtok.data.loader import LoaderConfig, TaskMixtureLoader, collate_examples, eligible_tasks
from mmtok.data.shards import DATASET_FILE, load_token_dataset, make_row, shard_name, write_shard
from mmtok.interface import CodeSpec
from mmtok.sequence import build_example
from mmtok.vocab import UnifiedVocabulary, VocabularyMismatchError

VOCAB = UnifiedVocabulary(text=CodeSpec("text", 128), video=CodeSpec("video", 64), audio=CodeSpec("audio", 32, 2))


def synthetic_rows(n: int = 90):
    """Clips with 2..4 latent frames, some without audio, some without captions (varied sequence lengths)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        t = 2 + i % 3
        video = torch.randint(0, 64, (t, 2, 2), generator=g)
        audio = torch.randint(0, 32, (2, 3 * t), generator=g) if i % 5 else None
        captions = [f"clip {i}", f"another {i}"] if i % 7 else []
        rows.append(make_row(id=f"c{i:03d}", split="train" if i % 10 else "test", captions=captions,
                             text_ids=[[ord(c) % 128 for c in cap] for cap in captions], video=video, audio=audio,
                             num_frames=1 + 4 * (t - 1), num_samples=0 if audio is None else 100, meta={"i": i}))
    return rows


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    rows = synthetic_rows()
    shards = []
    for k in range(3):
        name = shard_name(k, 3)
        part = rows[k * 30:(k + 1) * 30]
        write_shard(root / "shards" / f"{name}.arrow", part)
        shards.append({"file": f"{name}.arrow", "num_records": len(part), "num_rows": len(part)})
    (root / DATASET_FILE).write_text(json.dumps({
        "shards": shards, "vocab_fingerprint": VOCAB.fingerprint, "vocab_layout": VOCAB.describe(),
        "audio_pattern": "frame_major", "num_audio_levels": 2}))
    return root


def loader(tokens, **kw):
    opts = {k: kw.pop(k) for k in ("rank", "world_size", "split", "streaming") if k in kw}
    return TaskMixtureLoader(tokens, VOCAB, LoaderConfig(**{"batch_size": 4, "group_window": 4, **kw}), **opts)


def same(a, b):
    return a["ids"] == b["ids"] and a["tasks"] == b["tasks"] and torch.equal(a["input_ids"], b["input_ids"])


def test_batch_structure(tokens):
    batch = next(iter(loader(tokens)))
    b, length = batch["input_ids"].shape
    assert b == 4 and batch["labels"].shape == (b, length)
    for i in range(b):
        n = int(batch["attention_mask"][i].sum())
        assert torch.all(batch["input_ids"][i, n:] == VOCAB.pad_id)
        assert int(batch["loss_mask"][i].float().argmax()) == int(batch["prefix_len"][i])
        assert not batch["loss_mask"][i, n:].any()
        assert torch.equal(batch["labels"][i] == -100, ~batch["loss_mask"][i])
        assert batch["input_ids"][i, 0] == VOCAB.bos_id and batch["input_ids"][i, n - 1] == VOCAB.eos_id


def test_deterministic_and_epochs_differ(tokens):
    a, b = loader(tokens), loader(tokens)
    ea, eb = list(a.epoch_batches(0)), list(b.epoch_batches(0))
    assert len(ea) == len(a) == 90 // 4
    assert all(same(x, y) for x, y in zip(ea, eb))
    assert [x["ids"] for x in a.epoch_batches(1)] != [x["ids"] for x in ea]
    assert [x["ids"] for x in loader(tokens, seed=1).epoch_batches(0)] != [x["ids"] for x in ea]


def test_resume_from_any_step_equals_uninterrupted(tokens):
    ref = list(loader(tokens).batches(num_epochs=2))
    assert [b["step"] for b in ref] == list(range(len(ref)))
    for start in (1, 5, 16, len(ref) // 2 + 3):
        resumed = list(loader(tokens).batches(start_step=start, num_epochs=2))
        assert len(resumed) == len(ref) - start
        assert all(same(x, y) and x["step"] == y["step"] for x, y in zip(resumed, ref[start:]))


def test_ranks_get_disjoint_examples_and_equal_steps(tokens):
    ranks = [loader(tokens, rank=r, world_size=3) for r in range(3)]
    epochs = [list(r.epoch_batches(0)) for r in ranks]
    assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) == len(ranks[0]) == (90 // 4) // 3
    seen = [{i for b in e for i in b["ids"]} for e in epochs]
    assert all(not (seen[a] & seen[b]) for a in range(3) for b in range(a + 1, 3))
    single = list(loader(tokens).epoch_batches(0))
    # the ranks together see exactly the first 3 * steps global batches of a single-process run
    assert set().union(*seen) == {i for b in single[: 3 * len(epochs[0])] for i in b["ids"]}
    with pytest.raises(ValueError, match="rank"):
        loader(tokens, rank=3, world_size=3)


def test_mixture_weights_and_eligibility(tokens):
    counts = Counter(t for b in loader(tokens, tasks={"t2v": 3.0, "v2a": 1.0}).batches(num_epochs=4)
                     for t in b["tasks"])
    assert set(counts) == {"t2v", "v2a"}
    assert 1.5 < counts["t2v"] / counts["v2a"] < 4.5
    # v2a only: rows without audio are left out and counted
    only = loader(tokens, tasks={"v2a": 1.0})
    assert only.num_unusable == 18
    ids = {i for b in only.epoch_batches(0) for i in b["ids"]}
    assert all(int(i[1:]) % 5 for i in ids)
    row = load_token_dataset(tokens)[0]  # c000: 2 latent frames, no audio, no captions
    assert eligible_tasks(row, ["t2v", "v2a", "vcont", "i2v", "v2t"]) == ["vcont", "i2v"]
    with pytest.raises(ValueError, match="unknown tasks"):
        loader(tokens, tasks={"t2x": 1.0})


def test_length_grouping_reduces_padding(tokens):
    def pad_fraction(ld):
        real = total = 0
        for b in ld.batches(num_epochs=2):
            real += int(b["attention_mask"].sum())
            total += b["attention_mask"].numel()
        return 1 - real / total

    grouped = pad_fraction(loader(tokens, group_window=8))
    plain = pad_fraction(loader(tokens, group_window=8, group_by_length=False))
    assert grouped < 0.6 * plain


def test_cond_dropout_rate(tokens):
    dropped = [bool(d) for b in loader(tokens, cond_dropout=0.3, tasks={"vcont": 1.0}).batches(num_epochs=6)
               for d in b["condition_dropped"]]
    assert abs(sum(dropped) / len(dropped) - 0.3) < 0.08


def test_split_streaming_and_errors(tokens):
    test_only = loader(tokens, split="test")
    ids = {i for b in test_only.batches(num_epochs=1) for i in b["ids"]}
    assert ids and all(int(i[1:]) % 10 == 0 for i in ids)
    s0 = list(loader(tokens, streaming=True, rank=0, world_size=3).epoch_batches(0))
    s0b = list(loader(tokens, streaming=True, rank=0, world_size=3).epoch_batches(0))
    s1 = list(loader(tokens, streaming=True, rank=1, world_size=3).epoch_batches(0))
    assert s0 and all(same(x, y) for x, y in zip(s0, s0b))
    assert not ({i for b in s0 for i in b["ids"]} & {i for b in s1 for i in b["ids"]})
    other = UnifiedVocabulary(text=CodeSpec("text", 100), video=CodeSpec("video", 64))
    with pytest.raises(VocabularyMismatchError):
        TaskMixtureLoader(tokens, other)
    with pytest.raises(ValueError, match="max_length"):
        next(iter(loader(tokens, max_length=10)))


def test_too_long_tasks_fall_back_to_shorter_ones(tokens):
    # t2v of clips with 3-4 latent frames is 27-35 tokens, vcont of any clip <= 23: at 26 many t2v fall back
    ld = loader(tokens, tasks={"t2v": 1.0, "vcont": 1.0}, max_length=26, cond_dropout=0.0, text_condition_prob=0.0)
    batches = list(ld.batches(num_epochs=1))
    assert len(batches) == len(ld)
    assert all(int(b["attention_mask"].sum(1).max()) <= 26 for b in batches)
    assert ld.too_long["t2v"] > 0 and sum(ld.too_long.values()) == ld.too_long["t2v"]


def test_collate_pads_to_multiple():
    ex = [build_example("vcont", VOCAB, video=torch.zeros(3, 2, 2, dtype=torch.long)),
          build_example("vcont", VOCAB, video=torch.zeros(2, 2, 2, dtype=torch.long))]
    batch = collate_examples(ex, VOCAB.pad_id, pad_to_multiple_of=8)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["attention_mask"][1].sum() == len(ex[1])


def test_micro_batches_with_accumulation_match_the_global_stream(tokens):
    single = loader(tokens)
    stream = list(single.batches(num_epochs=2))                      # W = 1, A = 1
    ranks = [loader(tokens, rank=r, world_size=2) for r in range(2)]
    steps = ranks[0].steps_per_epoch(grad_accum=2)
    assert steps == len(stream) // 2 // 4
    for step in (0, 1, steps - 1, steps, steps + 1):
        epoch, s = divmod(step, steps)
        for r, ld in enumerate(ranks):
            micro = ld.micro_batches(step, grad_accum=2)
            assert len(micro) == 2 and all(b["step"] == step for b in micro)
            for m, b in enumerate(micro):
                ref = stream[epoch * len(single) + s * 4 + m * 2 + r]
                assert same(b, ref)


def test_eval_batches_are_fixed_and_split_by_rank(tokens):
    full = loader(tokens, cond_dropout=0.5).eval_batches("v2a")
    assert len(full) == 72 // 4 and all(set(b["tasks"]) == {"v2a"} for b in full)
    assert not any(bool(d) for b in full for d in b["condition_dropped"])
    assert [b["ids"] for b in full] == [b["ids"] for b in loader(tokens, seed=5).eval_batches("v2a")]
    halves = [loader(tokens, rank=r, world_size=2).eval_batches("v2a", num_batches=5) for r in range(2)]
    assert [b["ids"] for b in halves[0]] == [b["ids"] for b in full[0:5:2]]
    assert [b["ids"] for b in halves[1]] == [b["ids"] for b in full[1:5:2]]


def test_streaming_resume_within_an_epoch(tokens):
    full = list(loader(tokens, streaming=True, group_window=2).epoch_batches(1))
    assert len(full) >= 8
    for start in (1, 4, 5):
        resumed = list(loader(tokens, streaming=True, group_window=2).epoch_batches(1, start_step=start))
        assert len(resumed) == len(full) - start and all(same(a, b) for a, b in zip(resumed, full[start:]))


def test_a_damaged_shard_is_an_error_naming_the_file(tokens, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tokens, copy)
    shard = next((copy / "shards").glob("*.arrow"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=f"token shard .*{shard.name} is damaged"):
        load_token_dataset(copy)


def test_video_runs_fold_the_video_conditions_of_plain_shards(tmp_path):
    """``video_runs=True`` over shards recorded against the plain vocabulary: the loader takes the vocabulary with
    run tokens, folds the static frames of every v2a condition and leaves the outputs as they were."""
    g = torch.Generator().manual_seed(0)
    rows = [make_row(id=f"s{i:02d}", split="train", captions=[f"still {i}"], text_ids=[[i % 128, 3]],
                     video=torch.randint(0, 64, (1, 2, 2), generator=g).expand(3, 2, 2),  # 3 equal frames
                     audio=torch.randint(0, 32, (2, 6), generator=g), num_frames=9, num_samples=100, meta={})
            for i in range(16)]
    write_shard(tmp_path / "shards" / f"{shard_name(0, 1)}.arrow", rows)
    (tmp_path / DATASET_FILE).write_text(json.dumps({
        "shards": [{"file": f"{shard_name(0, 1)}.arrow", "num_records": 16, "num_rows": 16}],
        "vocab_fingerprint": VOCAB.fingerprint, "vocab_layout": VOCAB.describe(),
        "audio_pattern": "frame_major", "num_audio_levels": 2}))
    runs_vocab = VOCAB.with_video_runs(4)
    cfg = dict(tasks={"v2a": 1.0}, batch_size=4, group_window=2, cond_dropout=0.0, text_condition_prob=0.0)
    plain = TaskMixtureLoader(tmp_path, VOCAB, LoaderConfig(**cfg))
    folded = TaskMixtureLoader(tmp_path, runs_vocab, LoaderConfig(**cfg, video_runs=True))
    run4 = runs_vocab.run_token_id(4)
    pairs = list(zip(plain.epoch_batches(0), folded.epoch_batches(0)))
    assert len(pairs) == 4
    for a, b in pairs:
        assert a["ids"] == b["ids"]
        # 12 video cells -> 4 codes and one <run_4> per repeated frame: 6 tokens shorter, outputs unchanged
        assert torch.equal(b["prefix_len"], a["prefix_len"] - 6)
        assert (b["input_ids"] == run4).sum(1).tolist() == [2] * 4
        for i in range(4):
            pa, pb = int(a["prefix_len"][i]), int(b["prefix_len"][i])
            n = int(a["attention_mask"][i].sum())
            assert torch.equal(b["input_ids"][i, pb:n - 6], a["input_ids"][i, pa:n])
            assert torch.equal(b["loss_mask"][i, pb:n - 6], a["loss_mask"][i, pa:n])
    evals = folded.eval_batches("v2a")
    assert evals and all(int((e["input_ids"] == run4).sum()) == 8 for e in evals)
    with pytest.raises(ValueError, match="run tokens"):
        TaskMixtureLoader(tmp_path, VOCAB, LoaderConfig(**cfg, video_runs=True))
    with pytest.raises(VocabularyMismatchError):  # the shards' layout is still checked, run tokens aside
        TaskMixtureLoader(tmp_path, UnifiedVocabulary(text=CodeSpec("text", 100), video=CodeSpec("video", 64),
                                                      max_video_run=4))
