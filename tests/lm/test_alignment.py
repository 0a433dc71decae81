"""Tests of the VATT-style alignment head (lm/configuration_alignment.py, lm/modeling_alignment.py,
lm/alignment_losses.py, lm/zero_shot.py): NCE / MIL-NCE values and symmetry, DropToken, embedding shapes and norms,
padding invariance, training on tiny data, zero-shot helpers, 2-process gathering, bad input."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lm import MMLMConfig, MMLMForCausalLM, MMLMModel
from lm.alignment_losses import gather_across_processes, mil_nce_loss, nce_loss
from lm.configuration_alignment import AlignmentConfig
from lm.modeling_alignment import AlignmentHead, drop_tokens, extract_segments, masked_pool
from lm.zero_shot import zero_shot_classification, zero_shot_retrieval
from mmtok.interface import CodeSpec
from mmtok.sequence import build_example
from mmtok.vocab import UnifiedVocabulary

VOCAB = UnifiedVocabulary(text=CodeSpec("text", 32), video=CodeSpec("video", 64),
                          audio=CodeSpec("audio", 16, num_codebooks=2))
VIDEO = VOCAB.range_of("video")
AUDIO = VOCAB.range_of("audio")
TEXT = VOCAB.range_of("text")
VA_DIM, VT_DIM = 24, 12


def make_model(seed: int = 0, **align) -> tuple[MMLMModel, AlignmentHead]:
    torch.manual_seed(seed)
    config = MMLMConfig.from_preset("debug", vocab=VOCAB)
    backbone = MMLMModel(config)
    settings = dict(va_dim=VA_DIM, vt_dim=VT_DIM, temperature=0.1)
    settings.update(align)
    head = AlignmentHead(config.hidden_size, AlignmentConfig.from_vocabulary(VOCAB, **settings),
                         modality_ranges=config.modality_ranges, bos_token_id=config.bos_token_id,
                         pad_token_id=config.pad_token_id)
    return backbone, head


def clip(c: int, seed: int):
    """Codes of one clip whose video, audio and caption all follow its class ``c`` (plus per-clip noise)."""
    g = torch.Generator().manual_seed(seed)
    video = (torch.arange(8).view(2, 2, 2) * (c + 1) + c * 5 + torch.randint(0, 2, (2, 2, 2), generator=g)) % 64
    audio = (torch.arange(8).view(2, 4) * (c + 2) + 3 * c) % 16
    text = [(3 * c + k) % 32 for k in range(4)]
    return video.long(), audio.long(), text


def batch_of(examples) -> torch.Tensor:
    """Right-padded ``[B, L]`` input_ids of TaskExamples."""
    length = max(len(e) for e in examples)
    ids = torch.full((len(examples), length), VOCAB.pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e)] = e.input_ids
    return ids


def mixed_batch(clips, tasks):
    """A batch of task sequences over (class, seed) clips; v2a rows carry the caption as a condition."""
    examples = []
    for (c, s), task in zip(clips, tasks):
        video, audio, text = clip(c, s)
        examples.append(build_example(task, VOCAB, text=text, video=video, audio=audio))
    return batch_of(examples)


# ------------------------------------------------------------------------------------------------------- losses
def test_nce_is_symmetric_in_video_and_audio():
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert torch.allclose(nce_loss(v, a, 10.0), nce_loss(a, v, 10.0), atol=1e-6)
    # through the head too: the same pooled states fed as video and as audio give the swapped pairs
    backbone, head = make_model()
    pooled_v, pooled_a = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    zv, za = head.project("video", pooled_v)["va"], head.project("audio", pooled_a)["va"]
    assert torch.allclose(nce_loss(zv, za, head.logit_scale), nce_loss(za, zv, head.logit_scale), atol=1e-6)


def test_mil_nce_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(3, 5, generator=g), torch.randn(5, 5, generator=g)
    pos = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)  # captions per clip
    scale = 4.0
    s = scale * (torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T)
    expected = 0.0
    for i in range(3):
        num = sum(math.exp(s[i, k]) for k in range(5) if pos[i, k])
        den = sum(math.exp(s[i, k]) for k in range(5))
        den += sum(math.exp(s[j, k]) for j in range(3) if j != i for k in range(5) if pos[i, k])
        expected += -math.log(num / den)
    assert mil_nce_loss(v, t, pos, scale).item() == pytest.approx(expected / 3, rel=1e-5)
    # one caption per clip: MIL-NCE is the NCE
    assert torch.allclose(mil_nce_loss(v, t[:3], torch.eye(3, dtype=torch.bool), scale), nce_loss(v, t[:3], scale))
    # aligned pairs score a lower loss than shuffled ones
    assert nce_loss(v, v + 0.01, scale) < nce_loss(v, v.roll(1, dims=0), scale)


# --------------------------------------------------------------------------------------------------- DropToken
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75])
def test_droptoken_drops_the_asked_fraction_and_keeps_order(rate):
    lengths = torch.tensor([1, 4, 9, 16, 30])
    ids = torch.zeros(5, 30, dtype=torch.long)
    mask = torch.arange(30)[None, :] < lengths[:, None]
    ids[mask] = torch.randint(100, 1000, (int(mask.sum()),))
    kept, kept_mask, positions = drop_tokens(ids, mask, rate, torch.Generator().manual_seed(0))
    expected = [max(1, round((1 - rate) * n)) for n in lengths.tolist()]
    assert kept_mask.sum(dim=1).tolist() == expected
    for i in range(5):
        pos = positions[i][kept_mask[i]]
        assert (pos.diff() > 0).all()                                     # relative order kept
        assert (pos < lengths[i]).all()                                   # only real tokens are kept
        assert torch.equal(kept[i][kept_mask[i]], ids[i, pos])
    if rate > 0:  # another draw keeps another subset
        _, _, other = drop_tokens(ids, mask, rate, torch.Generator().manual_seed(1))
        assert not torch.equal(other[4][kept_mask[4]], positions[4][kept_mask[4]])


def test_droptoken_runs_the_backbone_on_the_kept_tokens_only():
    backbone, head = make_model(droptoken=0.5)
    seen = []
    backbone.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["attention_mask"].sum(1)),
                                   with_kwargs=True)
    video = torch.tensor(list(VIDEO[:20])).view(1, 20).repeat(2, 1)
    video[1, 10:] = VOCAB.pad_id  # a shorter row
    head.train()
    z = head.encode(backbone, "video", video)["vt"]
    assert seen[-1].tolist() == [3 + 10, 3 + 5]  # <bos> <bov> kept <eov>
    head.encode(backbone, "text", torch.tensor([list(TEXT[:10])]))  # text is never dropped
    assert seen[-1].tolist() == [3 + 10]
    head.eval()
    head.encode(backbone, "video", video)
    assert seen[-1].tolist() == [3 + 20, 3 + 10]
    assert z.shape == (2, VT_DIM)


# -------------------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_embeddings_have_the_configured_dims_and_unit_norm(pooling):
    backbone, head = make_model(pooling=pooling)
    head.eval()
    video = VOCAB.to_global("video", torch.randint(0, 64, (3, 2, 2, 2)))  # [B, T', H', W']
    audio = VOCAB.to_global("audio", torch.randint(0, 16, (3, 2, 4)))  # [B, levels, frames]
    text = VOCAB.to_global("text", torch.randint(0, 32, (3, 5)))
    shapes = {"video_vt": (head.encode(backbone, "video", video)["vt"], VT_DIM),
              "video_va": (head.encode(backbone, "video", video)["va"], VA_DIM),
              "audio": (head.encode(backbone, "audio", audio)["va"], VA_DIM),
              "text": (head.encode(backbone, "text", text)["vt"], VT_DIM)}
    for name, (z, dim) in shapes.items():
        assert z.shape == (3, dim), name
        assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5), name
    sim = head.similarity(shapes["text"][0], shapes["video_vt"][0])
    assert sim.shape == (3, 3) and (sim.abs() <= 1 + 1e-5).all()


def test_padding_does_not_change_an_embedding():
    backbone, head = make_model(pooling="attention")
    head.eval()
    g = torch.Generator().manual_seed(3)
    long_row = VOCAB.to_global("video", torch.randint(0, 64, (12,), generator=g))
    short_row = VOCAB.to_global("video", torch.randint(0, 64, (5,), generator=g))
    batch = torch.full((2, 12), VOCAB.pad_id)
    batch[0], batch[1, :5] = long_row, short_row
    together = head.encode(backbone, "video", batch)["vt"]
    alone = head.encode(backbone, "video", short_row[None])["vt"]
    assert torch.allclose(together[1], alone[0], atol=1e-5)


def test_segments_are_found_from_the_id_ranges():
    video, audio, text = clip(2, 0)
    ex = build_example("v2a", VOCAB, text=text, video=video, audio=audio)  # <bos><v2a><bot>t<eot><bov>v<eov><boa>a..
    ids = batch_of([ex, build_example("t2v", VOCAB, text=text[:2], video=video)])
    seg, mask = extract_segments(ids, VIDEO)
    assert mask.sum(1).tolist() == [8, 8]
    assert torch.equal(seg[0], VOCAB.to_global("video", video.flatten()))
    seg, mask = extract_segments(ids, AUDIO)
    assert mask.sum(1).tolist() == [8, 0]
    seg, mask = extract_segments(ids, TEXT)
    assert mask.sum(1).tolist() == [4, 2] and seg[1, :2].tolist() == VOCAB.to_global("text", text[:2])


def test_run_length_video_conditions_are_read_whole_by_the_head():
    """With run tokens in the vocabulary, a v2a row's run-length video condition is its video segment (codes and runs
    in order); the head embeds it, and a plain video of the same clip still embeds."""
    runs_vocab = VOCAB.with_video_runs(4)
    video = torch.tensor([[[1, 2], [3, 4]], [[1, 2], [3, 9]], [[1, 2], [3, 9]]])  # [3, 2, 2]: runs of 3 and 4
    audio = torch.zeros(2, 4, dtype=torch.long)
    ex = build_example("v2a", runs_vocab, video=video, audio=audio, video_runs=True)
    ids = batch_of([ex, build_example("t2v", runs_vocab, text=[1, 2], video=video)])
    runs = runs_vocab.range_of("video_run")
    seg, mask = extract_segments(ids, VIDEO, extra_ranges=[(runs.start, runs.stop)])
    assert mask.sum(1).tolist() == [7, 12]                             # 4 codes, <run_3>, 9, <run_4> | 12 codes
    assert [runs_vocab.token_name(i) for i in seg[0, :7]] == [
        "video:1", "video:2", "video:3", "video:4", "<run_3>", "video:9", "<run_4>"]
    assert extract_segments(ids, VIDEO)[1].sum(1).tolist() == [5, 12]  # without the run range the runs are lost

    torch.manual_seed(0)
    config = MMLMConfig.from_preset("debug", vocab=runs_vocab, video_grid=[3, 2, 2])
    backbone = MMLMModel(config)
    head = AlignmentHead(config.hidden_size, AlignmentConfig.from_vocabulary(runs_vocab, va_dim=VA_DIM, vt_dim=VT_DIM),
                         modality_ranges=config.modality_ranges, bos_token_id=config.bos_token_id,
                         pad_token_id=config.pad_token_id).eval()
    assert head.extra_ranges("video") == [(runs.start, runs.stop)] and head.extra_ranges("audio") == []
    out = head(backbone, ids)
    assert out.num_va == 1 and torch.isfinite(out.loss)
    emb = head.encode(backbone, "video", seg[:1, :7])["va"]            # run-length ids are accepted as video
    assert emb.shape == (1, VA_DIM)
    with pytest.raises(ValueError, match="run-token range"):
        head.encode(backbone, "video", torch.tensor([[VOCAB.bos_id]]), mask=torch.ones(1, 1, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------- training
CLASSES = 6


@pytest.fixture(scope="module")
def trained():
    """Backbone + head trained for a few dozen steps on 6 clips (distinct classes), v2a and t2v rows."""
    torch.manual_seed(0)
    backbone, head = make_model(droptoken=0.25)
    ids = mixed_batch([(c, c) for c in range(CLASSES)] * 2, ["v2a"] * CLASSES + ["t2v"] * CLASSES)
    clip_ids = list(range(CLASSES)) * 2  # the t2v row of clip c is the same clip as its v2a row
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    backbone.train()
    head.train()
    for _ in range(40):
        out = head(backbone, ids, clip_ids=clip_ids, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.loss.item(), out.loss_va.item(), out.loss_vt.item(), out.num_va, out.num_vt_clips,
                       out.num_vt_captions))
    return backbone, head, losses


def test_loss_falls_on_tiny_data(trained):
    _, _, losses = trained
    assert losses[0][3:] == (CLASSES, CLASSES, 2 * CLASSES)  # duplicates of a clip count once; both captions
    first = sum(l[0] for l in losses[:3]) / 3
    last = sum(l[0] for l in losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert losses[-1][1] < losses[0][1] and losses[-1][2] < losses[0][2]


def test_zero_shot_retrieval_and_classification_after_training(trained):
    backbone, head, _ = trained
    assert head.training
    videos, audios, texts = zip(*(clip(c, c) for c in range(CLASSES)))
    video = VOCAB.to_global("video", torch.stack(videos))
    audio = VOCAB.to_global("audio", torch.stack(audios))
    captions = [VOCAB.to_global("text", t) for t in texts]
    m = zero_shot_retrieval(backbone, video, audio_ids=audio, text_ids=captions + captions,
                            text_clip=list(range(CLASSES)) * 2, head=head, batch_size=4)
    assert set(m) == {f"{d}/{k}" for d in ("t2v", "v2t", "v2a", "a2v")
                      for k in ("R@1", "R@5", "R@10", "median_rank")}
    chance = 1 / CLASSES
    for d in ("t2v", "v2t", "v2a", "a2v"):
        assert m[f"{d}/R@1"] > 2 * chance, m
        assert m[f"{d}/R@10"] == 1.0 and 1 <= m[f"{d}/median_rank"] <= CLASSES
    c = zero_shot_classification(backbone, video, list(range(CLASSES)), captions, head=head)
    assert c["chance"] == pytest.approx(chance)
    assert c["accuracy"] > 2 * chance and c["predictions"].shape == (CLASSES,)
    assert head.training  # the helpers restore the mode they found


def test_a_batch_without_pairs_gives_a_zero_loss_that_still_backpropagates():
    backbone, head = make_model()
    video, audio, text = clip(1, 0)
    ids = batch_of([build_example("v2a", VOCAB, video=video, audio=audio),  # one pair only: no negatives
                    build_example("a2v", VOCAB, video=video, audio=audio)])  # a second row of the same clip
    out = head(backbone, ids, clip_ids=[7, 7])
    assert out.num_va == 1 and out.loss_vt is None and out.num_vt_clips == 0
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)  # one clip: nothing to contrast with
    out.loss.backward()
    assert head.text_to_vt.weight.grad is not None and head.log_logit_scale.grad is not None


# ------------------------------------------------------------------------------------------------- distributed
def _union_batch():
    """8 rows over 6 clips (string ids): clips "c0" and "c1" appear on both ranks; rank 0's "c1" row carries video,
    audio and caption; rank 1 has no video-audio pair at all (its audio projection sees an empty batch)."""
    rows = [((0, 10), "v2a", "c0"), ((1, 11), "v2a", "c1"), ((2, 12), "v2a", "c2"), ((3, 13), "t2v", "c3"),
            ((1, 11), "t2v", "c1"), ((4, 14), "t2v", "c4"), ((5, 15), "t2v", "c5"), ((0, 10), "t2v", "c0")]
    examples = []
    for (c, s), task, _ in rows:
        video, audio, text = clip(c, s)
        examples.append(build_example(task, VOCAB, text=text if task == "t2v" or c % 2 else None, video=video,
                                      audio=audio))
    return batch_of(examples), [r[2] for r in rows]


def _loss_and_grads(ids, clip_ids):
    backbone, head = make_model(seed=7, droptoken=0.0)
    out = head(backbone, ids, clip_ids=clip_ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in [*backbone.named_parameters(), *head.named_parameters()]
             if p.grad is not None}
    return out, grads


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        ids, clip_ids = _union_batch()
        half = ids.shape[0] // world
        rows = slice(rank * half, (rank + 1) * half)
        out, grads = _loss_and_grads(ids[rows], clip_ids[rows])
        for g in grads.values():  # what DDP does: average the ranks' gradients
            dist.all_reduce(g)
            g /= world
        # ragged and all-empty gathers: rank 0 has no rows of the first tensor, no rank has rows of the second
        ragged, empty = gather_across_processes(torch.arange(3.0 * rank).view(-1, 1), torch.zeros(0, 2))
        torch.save({"ragged": ragged, "empty_shape": tuple(empty.shape),
                    "loss": out.loss.detach(), "loss_va": out.loss_va.detach(), "loss_vt": out.loss_vt.detach(),
                    "counts": (out.num_va, out.num_vt_clips, out.num_vt_captions), "grads": grads},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathering_over_two_processes_equals_one_process_on_the_union_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ids, clip_ids = _union_batch()
    full, full_grads = _loss_and_grads(ids, clip_ids)
    assert (full.num_va, full.num_vt_clips, full.num_vt_captions) == (3, 5, 6)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["ragged"].flatten().tolist() == [0.0, 1.0, 2.0] and r["empty_shape"] == (0, 2)
        assert r["counts"] == (full.num_va, full.num_vt_clips, full.num_vt_captions)
        for key in ("loss", "loss_va", "loss_vt"):
            assert torch.allclose(r[key], getattr(full, key).detach(), atol=1e-5), (rank, key)
        assert r["grads"].keys() == full_grads.keys()
        for name, g in full_grads.items():
            assert torch.allclose(r["grads"][name], g, atol=1e-5, rtol=1e-4), (rank, name)


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    backbone, head = make_model()
    text_only = torch.tensor([list(TEXT[:4])])
    with pytest.raises(ValueError, match="no video tokens"):
        head.encode(backbone, "video",
                    torch.cat([torch.tensor([list(VIDEO[:4])]), torch.zeros(1, 4, dtype=torch.long)]))
    with pytest.raises(ValueError, match="global ids"):  # local codes, or ids of another modality
        head.encode(backbone, "video", text_only)
    with pytest.raises(ValueError, match="same shape"):
        nce_loss(torch.randn(4, 8), torch.randn(3, 8), 10.0)
    with pytest.raises(ValueError, match="positives must be"):
        mil_nce_loss(torch.randn(4, 8), torch.randn(3, 8), torch.ones(4, 4, dtype=torch.bool), 10.0)
    with pytest.raises(ValueError, match="no positive caption"):
        mil_nce_loss(torch.randn(2, 8), torch.randn(2, 8), torch.tensor([[True, False], [False, False]]), 10.0)
    with pytest.raises(ValueError, match="no video tokens to pool"):
        masked_pool(torch.randn(2, 3, 4), torch.tensor([[1, 0, 0], [0, 0, 0]]), what="video")
    with pytest.raises(ValueError, match="clip_ids has 1 entries"):
        head(backbone, mixed_batch([(0, 0), (1, 1)], ["v2a", "t2v"]), clip_ids=["a"])
    with pytest.raises(ValueError, match="must pair"):
        video = VOCAB.to_global("video", torch.randint(0, 64, (3, 8)))
        zero_shot_retrieval(backbone, video, audio_ids=VOCAB.to_global("audio", torch.randint(0, 16, (2, 8))),
                            head=head)
    with pytest.raises(ValueError, match="similarity needs"):
        AlignmentHead.similarity(torch.randn(2, VA_DIM), torch.randn(2, VT_DIM))
    with pytest.raises(ValueError, match="no alignment head"):
        MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=VOCAB)).embed_text(text_only)
    with pytest.raises(ValueError, match="no alignment head"):
        zero_shot_classification(backbone, torch.tensor([list(VIDEO[:4])] * 2), [0, 1], [[TEXT[0]], [TEXT[1]]])
    with pytest.raises(ValueError, match="droptoken"):
        AlignmentConfig(droptoken=1.0)
    with pytest.raises(ValueError, match="unknown alignment setting"):
        AlignmentConfig.from_value({"va_dims": 3})
    with pytest.raises(ValueError, match="pooling"):
        AlignmentConfig(pooling="max")


# ------------------------------------------------------------------------------------------------- integration
INTEGRATED = hasattr(MMLMForCausalLM, "embed_video")


@pytest.mark.skipif(not INTEGRATED, reason="lm/modeling_mmlm.py does not carry the alignment head yet")
def test_head_saves_and_loads_with_the_model(tmp_path):
    align = AlignmentConfig.from_vocabulary(VOCAB, va_dim=VA_DIM, vt_dim=VT_DIM, pooling="attention").to_dict()
    torch.manual_seed(0)
    model = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=VOCAB, alignment=align)).eval()
    assert isinstance(model.alignment, AlignmentHead)
    assert model.alignment.temperature == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        model.alignment.log_logit_scale.fill_(math.log(20.0))
    video = VOCAB.to_global("video", torch.randint(0, 64, (2, 8)))
    text = VOCAB.to_global("text", torch.randint(0, 32, (2, 4)))
    before = model.alignment.similarity(model.embed_text(text), model.embed_video(video))
    model.save_pretrained(tmp_path)
    loaded = MMLMForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.alignment == model.config.alignment
    assert loaded.alignment.temperature == pytest.approx(0.05, rel=1e-5)
    assert torch.allclose(loaded.alignment.similarity(loaded.embed_text(text), loaded.embed_video(video)), before,
                          atol=1e-5)
    ids = mixed_batch([(0, 0), (1, 1)], ["v2a", "t2v"])
    assert torch.isfinite(model.alignment_loss({"input_ids": ids}).loss)


@pytest.mark.skipif(not INTEGRATED, reason="lm/modeling_mmlm.py does not carry the alignment head yet")
def test_a_head_added_to_a_pretrained_lm_starts_from_its_init(tmp_path):
    torch.manual_seed(0)
    plain = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=VOCAB))
    assert not hasattr(plain, "alignment")
    plain.save_pretrained(tmp_path)
    align = AlignmentConfig.from_vocabulary(VOCAB, va_dim=VA_DIM, vt_dim=VT_DIM, temperature=0.2).to_dict()
    model = MMLMForCausalLM.from_pretrained(tmp_path, alignment=align)
    assert model.alignment.temperature == pytest.approx(0.2, rel=1e-5)
    assert torch.equal(model.model.embed_tokens.weight, plain.model.embed_tokens.weight)
    for name, p in model.alignment.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("weight"):
            assert 0 < p.std() < 0.1, name  # drawn from the init, not left empty
    with pytest.raises(ValueError, match="unknown alignment setting"):
        MMLMConfig.from_preset("debug", vocab=VOCAB, alignment={"va_dims": 3})
