"""Tests of the token LM: forward/backward, loss mask, per-modality NLL, prefix-LM mask, KV-cache generation,
save/load through the Auto classes, vocabulary layout checks, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

import lm
from lm import MMLMConfig, MMLMForCausalLM, VocabularyMismatchError, prefix_lm_mask

VOCAB = 300
RANGES = {"special": [0, 10], "text": [10, 100], "video": [100, 260], "audio": [260, 300]}


def make_model(seed: int = 0, **overrides) -> MMLMForCausalLM:
    torch.manual_seed(seed)
    config = MMLMConfig.from_preset("debug", vocab_size=VOCAB, modality_ranges=RANGES, **overrides)
    return MMLMForCausalLM(config).eval()


def make_batch(batch: int = 3, length: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    prefix_len = torch.randint(1, length // 2, (batch,), generator=g)
    loss_mask = (torch.arange(length)[None, :] >= prefix_len[:, None]).long()  # loss on the output segment only
    return ids, loss_mask, prefix_len


class FakeVocab:
    """Duck-typed stand-in for mmtok.vocab.UnifiedVocabulary."""

    def __init__(self, fingerprint: str, size: int = VOCAB, ranges=None):
        self.fingerprint = fingerprint
        self.size = size
        self._ranges = ranges or RANGES
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def range_of(self, modality, level=None):
        if modality not in self._ranges:
            raise KeyError(modality)
        return range(*self._ranges[modality])


class FakeBundle:
    def __init__(self, vocab):
        self.vocab = vocab


# ------------------------------------------------------------------------------------------- forward / loss
def test_forward_backward_shapes_and_gradients():
    model = make_model().train()
    ids, loss_mask, prefix_len = make_batch()
    out = model(ids, loss_mask=loss_mask, prefix_len=prefix_len)
    assert out.logits.shape == (3, 24, VOCAB)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # A random init predicts roughly uniformly: NLL near log(V).
    assert abs(out.loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_loss_equals_manual_masked_nll_and_modality_nll():
    model = make_model()
    ids, loss_mask, prefix_len = make_batch()
    out = model(ids, loss_mask=loss_mask, prefix_len=prefix_len)
    logp = F.log_softmax(out.logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # [B, L-1]
    m = loss_mask[:, 1:].bool()
    torch.testing.assert_close(out.loss, nll[m].mean())
    assert out.num_loss_tokens.item() == m.sum().item()
    for name, (a, b) in RANGES.items():
        sel = m & (ids[:, 1:] >= a) & (ids[:, 1:] < b)
        assert out.modality_tokens[name].item() == sel.sum().item()
        if sel.any():
            torch.testing.assert_close(out.modality_nll[name], nll[sel].mean())
        else:
            assert torch.isnan(out.modality_nll[name])
    assert sum(v.item() for v in out.modality_tokens.values()) == m.sum().item()


def test_labels_minus_100_and_loss_mask_combine():
    model = make_model()
    ids, loss_mask, prefix_len = make_batch()
    labels = ids.clone()
    labels[:, -3:] = -100
    out = model(ids, labels=labels, loss_mask=loss_mask, prefix_len=prefix_len)
    logp = F.log_softmax(out.logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    m = loss_mask[:, 1:].bool() & (labels[:, 1:] != -100)
    torch.testing.assert_close(out.loss, nll[m].mean())


def test_float_loss_mask_weighs_each_target_and_ones_match_the_plain_mask():
    model = make_model()
    ids, loss_mask, prefix_len = make_batch()
    plain = model(ids, loss_mask=loss_mask, prefix_len=prefix_len)
    torch.testing.assert_close(model(ids, loss_mask=loss_mask.float(), prefix_len=prefix_len).loss, plain.loss)
    weights = loss_mask.float()
    weights[:, -4:] *= 3.0  # the last targets of every row count 3x
    out = model(ids, loss_mask=weights, prefix_len=prefix_len)
    logp = F.log_softmax(out.logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # [B, L-1]
    w = weights[:, 1:]
    torch.testing.assert_close(out.loss, (nll * w).sum() / w.sum())
    assert out.num_loss_tokens.item() == int((w > 0).sum())  # a token count, not a weight sum
    m = w > 0
    torch.testing.assert_close(out.modality_nll["video"], nll[m & (ids[:, 1:] >= 100) & (ids[:, 1:] < 260)].mean())
    assert not torch.allclose(out.loss, plain.loss)
    with pytest.raises(ValueError, match="loss_mask weights must be >= 0"):
        model(ids, loss_mask=-weights, prefix_len=prefix_len)


def test_num_items_in_batch_makes_split_batches_sum_to_the_full_batch():
    model = make_model()
    ids, loss_mask, prefix_len = make_batch(batch=4)
    full = model(ids, loss_mask=loss_mask, prefix_len=prefix_len).loss
    n = loss_mask[:, 1:].sum()
    parts = [model(ids[s], loss_mask=loss_mask[s], prefix_len=prefix_len[s], num_items_in_batch=n).loss
             for s in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_loss_goes_down_on_a_fixed_batch():
    model = make_model().train()
    ids, loss_mask, prefix_len = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, loss_mask=loss_mask, prefix_len=prefix_len).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------------------------- prefix LM
def test_prefix_lm_mask_reference_by_hand():
    mask = prefix_lm_mask(torch.tensor([2, 0]), q_len=4)
    expected_prefix2 = torch.tensor([[1, 1, 0, 0],
                                     [1, 1, 0, 0],
                                     [1, 1, 1, 0],
                                     [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0], expected_prefix2)
    assert torch.equal(mask[1], torch.ones(4, 4).tril().bool())  # prefix 0 = causal
    # Decoding: one query at position 4 with a cache of 4 sees keys 0..4.
    assert torch.equal(prefix_lm_mask(torch.tensor([2]), q_len=1, past_len=4)[0], torch.ones(1, 5, dtype=torch.bool))


def test_attention_pattern_is_exactly_the_prefix_lm_mask():
    """With eager attention, attention probabilities are > 0 exactly where the prefix-LM mask allows."""
    model = make_model(attn_implementation="eager")
    ids, _, prefix_len = make_batch(batch=3, length=12)
    prefix_len = torch.tensor([0, 5, 12])
    out = model(ids, prefix_len=prefix_len, output_attentions=True)
    expected = prefix_lm_mask(prefix_len, q_len=12)  # [B, q, kv]
    assert len(out.attentions) == model.config.num_hidden_layers
    for attn in out.attentions:  # [B, heads, q, kv]
        assert torch.equal(attn > 0, expected[:, None].expand_as(attn))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vectorised_prefix_mask_matches_transformers_overlay(attn, monkeypatch):
    """The tensor mask built for unpadded / right-padded batches gives the same outputs as transformers'
    create_causal_mask with the prefix overlay, with and without a KV cache."""
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask

    import lm.modeling_mmlm as modeling

    model = make_model(attn_implementation=attn)
    ids, _, _ = make_batch(batch=3, length=14)
    prefix_len = torch.tensor([0, 5, 14])
    attention_mask = torch.ones(3, 14, dtype=torch.long)
    attention_mask[0, 11:] = 0  # right padding

    def run(**kw):
        return model(ids, prefix_len=prefix_len, **kw).logits

    def cached():  # the first 4 tokens fill a cache; prefixes of 5 and 9 reach into the other 10 tokens
        cache = DynamicCache(config=model.config)
        model(ids[:, :4], prefix_len=torch.tensor([0, 4, 4]), cache=cache, use_cache=True)
        return model(ids[:, 4:], prefix_len=torch.tensor([0, 5, 9]), cache=cache, use_cache=True).logits

    fast = [run(), run(attention_mask=attention_mask), cached()]
    assert not torch.allclose(fast[0][1], model(ids).logits[1])  # the prefix changes row 1's outputs

    def overlay_mask(self, inputs_embeds, attention_mask, cache, position_ids, prefix_len):
        return create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids,
                                  or_mask_function=modeling.prefix_lm_overlay(prefix_len))

    monkeypatch.setattr(modeling.MMLMModel, "build_attention_mask", overlay_mask)
    slow = [run(), run(attention_mask=attention_mask), cached()]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


def test_left_padding_mask_applies_on_top_of_the_prefix():
    """Batched prompts (left padding + attention_mask, as generation uses): pad keys get no attention at all."""
    model = make_model(attn_implementation="eager")
    ids, _, _ = make_batch(batch=2, length=10)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, :3] = 0  # row 1 is left-padded by 3
    prefix_len = torch.tensor([10, 10])
    out = model(ids, attention_mask=attention_mask, prefix_len=prefix_len, output_attentions=True)
    expected = prefix_lm_mask(prefix_len, q_len=10) & attention_mask.bool()[:, None, :]
    for attn in out.attentions:  # [B, heads, q, kv]
        for b in range(2):
            for q in range(10):
                if attention_mask[b, q]:  # real-token queries
                    assert torch.equal(attn[b, :, q] > 0, expected[b, q].expand(attn.shape[1], -1))


def test_prefix_is_bidirectional_and_output_is_causal():
    model = make_model()
    ids, _, _ = make_batch(batch=1, length=16)
    prefix_len = torch.tensor([6])
    base = model(ids, prefix_len=prefix_len).logits
    # Changing a prefix token (position 4) changes the output at position 0: the prefix sees itself both ways.
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 1) % VOCAB
    after = model(changed, prefix_len=prefix_len).logits
    assert not torch.allclose(after[0, 0], base[0, 0])
    # Changing an output token (position 10) leaves positions < 10 untouched: the output segment is causal.
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % VOCAB
    after = model(changed, prefix_len=prefix_len).logits
    torch.testing.assert_close(after[0, :10], base[0, :10])
    assert not torch.allclose(after[0, 10], base[0, 10])
    # Without a prefix the model is purely causal: position 4's change does not reach position 0.
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 1) % VOCAB
    torch.testing.assert_close(model(changed).logits[0, :4], model(ids).logits[0, :4])


def test_prefix_lm_off_ignores_prefix_len():
    model = make_model(prefix_lm=False)
    ids, _, prefix_len = make_batch()
    torch.testing.assert_close(model(ids, prefix_len=prefix_len).logits, model(ids).logits)


def test_sdpa_and_eager_agree_with_a_prefix():
    sdpa = make_model(attn_implementation="sdpa")
    eager = make_model(attn_implementation="eager")
    ids, _, prefix_len = make_batch()
    torch.testing.assert_close(sdpa(ids, prefix_len=prefix_len).logits, eager(ids, prefix_len=prefix_len).logits,
                               atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("with_prefix", [False, True])
def test_kv_cache_generation_equals_no_cache_greedy(with_prefix):
    model = make_model()
    prompt, _, _ = make_batch(batch=2, length=7, seed=3)
    kwargs = {"prefix_len": torch.tensor([7, 7])} if with_prefix else {}
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, **kwargs)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, **kwargs)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, uncached)
    # And both equal a hand-written argmax loop over full forwards.
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = model(seq, **kwargs).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


def test_the_kv_cache_is_cache_and_past_key_values_is_deprecated():
    """The KV cache is the ``cache`` argument and output field (transformers 5.24's name, what its generate passes);
    ``past_key_values`` still extends the same cache, with transformers' FutureWarning, as LlamaModel takes it;
    passing both is an error."""
    from transformers import DynamicCache

    model = make_model()
    ids, _, _ = make_batch(batch=2, length=9, seed=4)
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        kv = DynamicCache(config=model.config)
        out = model(ids[:, :8], use_cache=True, cache=kv)
        assert out.cache is kv and model.model(ids[:, :8], use_cache=True).cache.get_seq_length() == 8
        step = model(ids[:, 8:], use_cache=True, cache=kv).logits[:, -1]
        assert kv.get_seq_length() == 9
        old = DynamicCache(config=model.config)
        with pytest.warns(FutureWarning, match="past_key_values"):
            model(ids[:, :8], use_cache=True, past_key_values=old)
        with pytest.warns(FutureWarning, match="past_key_values"):
            old_step = model(ids[:, 8:], use_cache=True, past_key_values=old).logits[:, -1]
        assert old.get_seq_length() == 9
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(old_step, step)
    with pytest.raises(ValueError, match="Both `past_key_values` and `cache`"):
        model(ids, past_key_values=DynamicCache(config=model.config), cache=DynamicCache(config=model.config))


# --------------------------------------------------------------------------------------------- save / load
def test_save_pretrained_from_pretrained_round_trip_through_auto_classes(tmp_path):
    model = make_model(vocab_fingerprint="abc123")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mmlm"
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MMLMConfig)
    assert config.vocab_fingerprint == "abc123" and config.modality_ranges == RANGES
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MMLMForCausalLM)
    ids, _, prefix_len = make_batch()
    torch.testing.assert_close(loaded(ids, prefix_len=prefix_len).logits, model(ids, prefix_len=prefix_len).logits)


def test_video_code_levels_share_rows_between_codes_with_common_levels(tmp_path):
    from mmtok.quantizers.fsq import FSQ

    levels = [4, 5, 8]                                                   # 160 codes = the video range of RANGES
    model = make_model(video_code_levels=levels).train()
    shared = model.head_levels
    # the digits follow FSQ's index order: digit i of code c is the rank of its value on FSQ's dimension i
    values = FSQ(levels=levels).indices_to_codes(torch.arange(160))     # [160, 3]
    offsets = torch.tensor([0, 4, 9])
    for i in range(3):
        ranks = torch.unique(values[:, i], return_inverse=True)[1]
        assert torch.equal(shared.digits[:, i] - offsets[i], ranks)
    # logits = the plain head + the shared rows on the video codes only
    ids, loss_mask, prefix_len = make_batch()
    out = model(ids, loss_mask=loss_mask, prefix_len=prefix_len)
    hidden = model.model(ids, prefix_len=prefix_len).last_hidden_state
    plain = model.lm_head(hidden)
    torch.testing.assert_close(out.logits[..., :100], plain[..., :100])
    torch.testing.assert_close(out.logits[..., 260:], plain[..., 260:])
    torch.testing.assert_close(out.logits[..., 100:260], plain[..., 100:260] + hidden @ shared.rows().T)
    # a gradient through one video code reaches the level vectors it is made of, and so every code sharing them
    out.loss.backward()
    assert shared.table.weight.grad.abs().sum(1).gt(0).all()
    assert model.model.embed_levels.table.weight.grad is not None
    # the input side: a video id embeds as its own row plus its level vectors
    video_id = torch.tensor([[100 + 37]])
    emb = model.model.embed_levels
    expected = model.model.embed_tokens.weight[137] + emb.table.weight[emb.digits[37]].sum(0)
    got = F.embedding(video_id, emb.add_to(model.model.embed_tokens.weight))[0, 0]
    torch.testing.assert_close(got, expected)
    # saved and loaded through the Auto classes, the model gives the same logits
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, prefix_len=prefix_len).logits, model(ids, prefix_len=prefix_len).logits)
    with pytest.raises(Exception, match="video_code_levels"):
        make_model(video_code_levels=[8, 8])                            # 64 codes for a 160-id range


def test_video_positions_count_video_tokens_since_bos():
    from lm.modeling_mmlm import video_positions

    bos, v, t = 1, 150, 20                                              # <bos>, a video id, a text id
    ids = torch.tensor([[0, bos, t, v, v, v, t, v, v, bos, v, v],       # left pad; a second packed sequence
                        [bos, v, v, v, v, v, t, t, t, t, t, t]])
    expected = torch.tensor([[-1, -1, -1, 0, 1, 2, -1, 3, 4, -1, 0, 1],
                             [-1, 0, 1, 2, 3, 4, -1, -1, -1, -1, -1, -1]])
    assert torch.equal(video_positions(ids, RANGES["video"], bos), expected)


def test_video_grid_embeds_cells_and_frames_and_generates_with_a_cache(tmp_path):
    from transformers import DynamicCache

    from lm.modeling_mmlm import video_positions

    model = make_model(video_grid=[3, 2, 2], bos_token_id=1)
    emb = model.model.embed_video_positions
    with torch.no_grad():                                               # init may be small: make the terms visible
        emb.cell.weight.normal_()
        emb.frame.weight.normal_()
    bos, v = 1, 150
    # the same video code embeds differently in each cell and frame; text tokens get nothing added
    ids = torch.tensor([[bos, 20] + [v] * 14])                          # 14 video tokens: frames 0-2, then 3 (clamped)
    pos = video_positions(ids, RANGES["video"], bos)
    added = emb(pos)[0]                                                 # [L, H]
    assert torch.equal(added[:2], torch.zeros_like(added[:2]))
    torch.testing.assert_close(added[2 + 5], emb.cell.weight[1] + emb.frame.weight[1])
    torch.testing.assert_close(added[2 + 13], emb.cell.weight[1] + emb.frame.weight[2])   # frame 3 shares frame 2's
    assert not torch.allclose(added[2], added[3])
    # a cached step needs the positions of the whole sequence; with them it equals the full forward
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        kv = DynamicCache(config=model.config)
        model(ids[:, :-1], use_cache=True, cache=kv)
        with pytest.raises(ValueError, match="video_positions"):
            model(ids[:, -1:], use_cache=True, cache=kv)
        kv = DynamicCache(config=model.config)
        model(ids[:, :-1], use_cache=True, cache=kv)
        step = model(ids[:, -1:], use_cache=True, cache=kv, video_positions=pos[:, -1:]).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    # transformers' generate passes them itself: cached and uncached greedy decoding agree
    prompt = torch.tensor([[bos, 20, 21, v, 151]])
    cached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    # saved and loaded, the same logits; a bad grid is a clear error
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    with pytest.raises(Exception, match="video_grid"):
        make_model(video_grid=[3, 2], bos_token_id=1)
    with pytest.raises(Exception, match="video_grid"):
        make_model(video_grid=[3, 2, 2])                                # no bos_token_id


def test_video_positions_count_the_cells_of_run_tokens():
    """Run-length video conditions: every code keeps the (frame, cell) index it has in the plain form, and a run
    token takes the index of its first cell (here over a vcont sequence, with its two video segments)."""
    from lm.modeling_mmlm import video_positions
    from mmtok.interface import CodeSpec
    from mmtok.run_length import run_cells, video_runs_from_global
    from mmtok.sequence import build_example
    from mmtok.vocab import UnifiedVocabulary

    vocab = UnifiedVocabulary(text=CodeSpec("text", 20), video=CodeSpec("video", 16), max_video_run=6)
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 16, (6, 2, 3), generator=g)
    video[2] = video[1]                                                 # a static frame: one <run_6>
    video[3, 0] = video[2, 0]                                           # half a frame repeats: one <run_3>
    runs = vocab.range_of("video_run")
    plain = build_example("vcont", vocab, video=video, cond_frames=4).input_ids
    folded = build_example("vcont", vocab, video=video, cond_frames=4, video_runs=True).input_ids
    assert len(folded) < len(plain)
    rng = (vocab.range_of("video").start, vocab.range_of("video").stop)
    ids = torch.stack([plain, torch.cat([folded, torch.zeros(len(plain) - len(folded), dtype=torch.long)])])
    pos = video_positions(ids, rng, vocab.bos_id, run_range=(runs.start, runs.stop))  # [2, L]
    is_vid = pos[0] >= 0
    assert torch.equal(pos[0][is_vid], torch.arange(video.numel()))    # plain: index = cell in (t, h, w) order
    tokens = video_runs_from_global(folded[pos[1][:len(folded)] >= 0], vocab)
    first_cell = run_cells(tokens).cumsum(0) - run_cells(tokens)
    assert torch.equal(pos[1][:len(folded)][pos[1][:len(folded)] >= 0], first_cell)
    flat = video.flatten()
    codes = tokens >= 0
    assert torch.equal(flat[first_cell[codes]], tokens[codes])         # each code sits at its plain cell
    assert int((tokens < 0).sum()) >= 2 and pos[1][len(folded):].eq(-1).all()
    # without run_range, run tokens are not video tokens (and the cells after them would shift)
    assert not torch.equal(video_positions(ids[1:], rng, vocab.bos_id), pos[1:])

    # the model reads the run range from its config: same positions, and cached generation still matches
    config = MMLMConfig.from_preset("debug", vocab=vocab, video_grid=[6, 2, 3])
    assert config.modality_ranges["video_run"] == [runs.start, runs.stop]
    torch.manual_seed(0)
    model = MMLMForCausalLM(config).eval()
    assert torch.equal(model.model.video_token_positions(ids), pos)
    prompt = folded[: len(folded) - 12][None]                          # the prefix and a little output
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_tied_embeddings_option():
    model = make_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert make_model().lm_head.weight.data_ptr() != make_model().model.embed_tokens.weight.data_ptr()


# --------------------------------------------------------------------------------------------- vocabulary
def test_config_from_vocabulary_records_layout():
    vocab = FakeVocab("layout-A")
    config = MMLMConfig.from_preset("debug", vocab=FakeBundle(vocab))
    assert config.vocab_size == VOCAB and config.vocab_fingerprint == "layout-A"
    assert config.modality_ranges == RANGES
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    config.check_vocabulary(vocab)  # same layout: no error


def test_vocabulary_mismatch_names_both_layouts():
    model = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=FakeVocab("layout-A")))
    other = FakeVocab("layout-B", size=320, ranges={**RANGES, "audio": [260, 320]})
    with pytest.raises(VocabularyMismatchError) as err:
        model.check_vocabulary(FakeBundle(other))
    msg = str(err.value)
    assert "layout-A" in msg and "layout-B" in msg and "300 ids" in msg and "320 ids" in msg
    with pytest.raises(VocabularyMismatchError, match="layout-B"):
        model.check_vocabulary(FakeVocab("layout-B"))  # same size, other fingerprint
    with pytest.raises(TypeError, match="vocabulary"):
        model.check_vocabulary(object())


# -------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    model = make_model()
    ids, loss_mask, prefix_len = make_batch()
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        model(ids + VOCAB)
    with pytest.raises(TypeError, match="integer"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model(ids[0])
    with pytest.raises(ValueError, match="prefix_len"):
        model(ids, prefix_len=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="prefix_len"):
        model(ids, prefix_len=torch.tensor([1, 2, 99]))
    with pytest.raises(ValueError, match="loss_mask"):
        model(ids, loss_mask=loss_mask[:, :-1])
    with pytest.raises(Exception, match="num_attention_heads"):
        MMLMConfig(hidden_size=65, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown MMLM preset"):
        MMLMConfig.from_preset("huge")
    with pytest.raises(Exception, match="outside the vocabulary"):
        MMLMConfig(vocab_size=50, modality_ranges={"text": [10, 60]})


def test_presets_sizes():
    """The documented sizes hold (the 1B preset is built on the meta device: no memory, no init)."""
    for name in lm.PRESETS:
        MMLMConfig.from_preset(name, vocab_size=1000)
    with torch.device("meta"):
        big = MMLMForCausalLM(MMLMConfig.from_preset("videopoet_1b", vocab_size=1000))
    non_embedding = sum(p.numel() for n, p in big.named_parameters()
                        if "embed_tokens" not in n and "lm_head" not in n)
    assert 0.8e9 < non_embedding < 1.0e9


def test_with_the_real_unified_vocabulary():
    vocab_mod = pytest.importorskip("mmtok.vocab")
    from mmtok.interface import CodeSpec

    vocab = vocab_mod.UnifiedVocabulary(text=CodeSpec("text", 100), video=CodeSpec("video", 64),
                                        audio=CodeSpec("audio", 16, num_codebooks=2))
    config = MMLMConfig.from_preset("debug", vocab=vocab)
    assert config.vocab_size == vocab.size and config.vocab_fingerprint == vocab.fingerprint
    assert config.modality_ranges["video"] == [vocab.range_of("video").start, vocab.range_of("video").stop]
    assert set(config.modality_ranges) == {"special", "text", "video", "audio"}  # no run tokens: no video_run
    assert config.pad_token_id == vocab.pad_id and config.eos_token_id == vocab.eos_id
    config.check_vocabulary(vocab)
    other = vocab_mod.UnifiedVocabulary(text=CodeSpec("text", 100), video=CodeSpec("video", 128))
    with pytest.raises(ValueError) as err:
        config.check_vocabulary(other)
    assert vocab.fingerprint in str(err.value) and other.fingerprint in str(err.value)


# --------------------------------------------------------------------------------------- strict, checked loading
def test_loading_is_strict_and_errors_name_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from mmtok.pretrained import WeightsMismatchError

    model = make_model()
    model.save_pretrained(tmp_path / "ok")
    assert (tmp_path / "ok" / "model.safetensors").stat().st_mode & 0o044 == 0o044 & ~_umask()  # as umask allows
    loaded = MMLMForCausalLM.from_pretrained(tmp_path / "ok")
    ids, _, prefix_len = make_batch()
    torch.testing.assert_close(loaded(ids, prefix_len=prefix_len).logits, model(ids, prefix_len=prefix_len).logits)

    import shutil

    shutil.copytree(tmp_path / "ok", tmp_path / "missing")
    weights = load_file(tmp_path / "ok" / "model.safetensors")
    dropped = next(k for k in weights if "layers.0.mlp" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "missing" / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match=f"missing: .*{dropped.split('.', 1)[1]}"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "missing")
    partial = MMLMForCausalLM.from_pretrained(tmp_path / "missing", strict=False)  # on purpose: allowed
    assert isinstance(partial, MMLMForCausalLM)

    shutil.copytree(tmp_path / "ok", tmp_path / "cut")
    data = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut/model\.safetensors is damaged or truncated"):
        MMLMForCausalLM.from_pretrained(tmp_path / "cut")
    (tmp_path / "cut" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cut/model\.safetensors is empty"):
        MMLMForCausalLM.from_pretrained(tmp_path / "cut")
    (tmp_path / "cut" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"cut: model\.safetensors is missing"):
        MMLMForCausalLM.from_pretrained(tmp_path / "cut")
    (tmp_path / "ok" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ok: config\.json is missing"):
        MMLMForCausalLM.from_pretrained(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        MMLMForCausalLM.from_pretrained(tmp_path / "nowhere")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
