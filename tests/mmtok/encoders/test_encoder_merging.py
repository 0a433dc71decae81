"""ToMe and VTM: what is merged, size conservation, clip isolation, r = 0, and VTM's learned saliency."""

import pytest
import torch

from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel
from mmtok.encoders.packing import Packing
from mmtok.encoders.token_merging import (merge_alternate_full, merge_bipartite, merge_tokens, tome_partition,
                                         vtm_partition)


def _per_clip_sum(values, packing):
    return torch.zeros(packing.num_clips, *values.shape[1:]).index_add_(0, packing.segment_ids(), values)


def test_the_most_similar_pair_is_merged_into_its_size_weighted_mean():
    # clip 0: tokens 2 (set A) and 3 (set B) share a direction; clip 1 (3 tokens) must stay untouched by clip 0
    metric = torch.eye(8)[[0, 1, 2, 2, 4, 5, 6, 7, 0]] + 0.01 * torch.randn(9, 8)
    metric[3] = metric[2] * 2                                       # same direction, cosine 1
    x = torch.randn(9, 4)
    sizes = torch.tensor([1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    packing = Packing.from_lengths(torch.tensor([6, 3]))
    out, out_sizes, new = merge_tokens(x, sizes, metric, packing, 1)
    assert new.counts == (5, 2)
    # clip 0: token 2 merged into token 3 (A into B); 0, 1, 4, 5 unchanged; A's left (0, 4), then the B's (1, 3, 5)
    torch.testing.assert_close(out[:5], torch.stack([x[0], x[4], x[1], (3 * x[2] + x[3]) / 4, x[5]]))
    assert out_sizes[:5].tolist() == [1.0, 1.0, 1.0, 4.0, 1.0]
    assert out_sizes[5:].sum().item() == 3.0                        # clip 1: 3 tokens in 2, same size


@pytest.mark.parametrize("r", [1, 3, 50])
def test_merging_conserves_size_and_the_size_weighted_sum_per_clip(r):
    lengths = torch.tensor([7, 1, 12, 4])
    packing = Packing.from_lengths(lengths)
    x, metric = torch.randn(packing.total, 5), torch.randn(packing.total, 6)
    sizes = torch.randint(1, 4, (packing.total,)).float()
    out, out_sizes, new = merge_tokens(x, sizes, metric, packing, r)
    assert new.lengths.tolist() == (lengths - torch.clamp(lengths // 2, max=r)).tolist()
    torch.testing.assert_close(_per_clip_sum(out_sizes, new), _per_clip_sum(sizes, packing))
    torch.testing.assert_close(_per_clip_sum(out * out_sizes[:, None], new),
                               _per_clip_sum(x * sizes[:, None], packing), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m, r", [(9, 3), (10, 5), (6, 50)])
def test_equal_length_clips_merge_as_the_padded_form_does(m, r):
    # merge_tokens takes the concatenating path for equal-length clips: the same tokens, in the same order
    b = 3
    x, metric, sizes = torch.randn(b, m, 5), torch.randn(b, m, 4), torch.randint(1, 4, (b, m)).float()
    out, out_sizes = merge_alternate_full(x, sizes, metric, r)
    ref, ref_sizes, keep = merge_bipartite(x, sizes, metric, tome_partition(torch.full((b,), m), m), r)
    assert out.shape == (b, m - min(r, m // 2), 5)
    torch.testing.assert_close(out.flatten(0, 1), ref[keep])
    torch.testing.assert_close(out_sizes.flatten(), ref_sizes[keep])
    packed, packed_sizes, packing = merge_tokens(x.flatten(0, 1), sizes.flatten(), metric.flatten(0, 1),
                                                 Packing.uniform(b, m), r)
    assert packing.counts == (out.shape[1],) * b
    torch.testing.assert_close(packed, out.flatten(0, 1))
    torch.testing.assert_close(packed_sizes, out_sizes.flatten())


def test_vtm_keeps_the_more_salient_token_of_each_pair_as_target():
    lengths = torch.tensor([8, 5])
    packing = Packing.from_lengths(lengths)
    saliency = torch.randn(packing.total)
    padded = packing.pad(saliency)
    partition = vtm_partition(packing.pad(saliency, float("nan")), lengths)    # padding values are ignored
    src_idx, src_ok, dst_idx, dst_ok = partition
    for b, n in enumerate(lengths.tolist()):
        targets, sources = set(dst_idx[b][dst_ok[b]].tolist()), set(src_idx[b][src_ok[b]].tolist())
        assert not targets & sources and targets | sources == set(range(n))     # each real token once
        for i in range(0, n - 1, 2):                                            # full pairs: the more salient wins
            assert int(padded[b, i:i + 2].argmax()) + i in targets
        assert int(padded[b, :n].argmax()) in targets                           # the most salient is never a source
    tie = vtm_partition(torch.zeros(1, 6), torch.tensor([6]))                  # a uniform scorer: ToMe's sets
    assert tie.dst_idx.tolist() == [[1, 3, 5]] and tie.src_idx.tolist() == [[0, 2, 4]]
    x = packing.pad(torch.randn(packing.total, 4))
    _, _, keep = merge_bipartite(x, packing.pad(torch.ones(packing.total)), packing.pad(torch.randn(packing.total, 3)),
                                 partition, 2)
    assert keep.sum(1).tolist() == [6, 3]
    n_src = src_idx.shape[1]
    assert keep[:, n_src:][dst_ok].all()                                        # the targets are never merged away


def _video_encoder(**overrides) -> PatchEncoderModel:
    return PatchEncoderModel(PatchEncoderConfig.from_preset("debug", modality="video", **overrides)).eval()


def test_r_zero_is_exactly_the_plain_encoder():
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    plain = _video_encoder()
    tome = _video_encoder(tome_r=4)
    tome.load_state_dict(plain.state_dict())
    merged = tome(pixel_values=video)
    assert merged.num_tokens.tolist() == [24, 24]                         # 32 -> 28 -> 24
    tome.config.tome_r = 0                                                # a runtime switch
    a, b = plain(pixel_values=video), tome(pixel_values=video)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)


def test_tome_encoder_conserves_clip_size_and_trains():
    model = _video_encoder(tome_r=5).train()
    out = model(pixel_values=torch.rand(2, 3, 4, 16, 16) * 2 - 1)
    assert out.num_tokens.tolist() == [22, 22]
    assert out.sizes.view(2, 22).sum(1).tolist() == [32.0, 32.0]
    out.pooler_output.square().sum().backward()
    assert model.embeddings.patch.weight.grad.abs().sum() > 0


def test_text_merging_stays_within_each_clip_and_ignores_padding():
    cfg = PatchEncoderConfig.from_preset("debug", modality="text", pad_token_id=0, tome_r=3)
    model = PatchEncoderModel(cfg).eval()
    ids = torch.randint(1, 256, (2, 12))
    ids[0, 5:] = 0                                                        # clip 0: 5 real tokens
    out = model(input_ids=ids)
    assert out.num_tokens.tolist() == [5 - 2 - 1, 12 - 3 - 3]              # min(r, n // 2) per block
    assert out.sizes[:2].sum().item() == 5 and out.sizes[2:].sum().item() == 12
    other = ids.clone()
    other[1] = torch.randint(1, 256, (12,))
    other[1, 9:] = 0
    changed = model(input_ids=other)
    torch.testing.assert_close(changed.last_hidden_state[:2], out.last_hidden_state[:2], rtol=1e-5, atol=1e-5)


def test_vtm_runs_and_its_saliency_scorers_learn():
    model = _video_encoder(tome_r=4, merge="vtm").train()
    out = model(pixel_values=torch.rand(2, 3, 4, 16, 16) * 2 - 1)
    assert out.num_tokens.tolist() == [24, 24] and out.sizes.sum().item() == 64
    out.pooler_output.square().sum().backward()
    for scorer in model.saliency:
        assert scorer.fc2.weight.grad is not None and scorer.fc2.weight.grad.abs().sum() > 0


def test_a_plain_checkpoint_loads_into_a_vtm_encoder(tmp_path):
    _video_encoder().save_pretrained(tmp_path)
    model = PatchEncoderModel.from_pretrained(tmp_path, tome_r=2, merge="vtm").eval()
    assert model.config.merge == "vtm" and len(model.saliency) == 2
    assert model(pixel_values=torch.zeros(1, 3, 2, 8, 8)).num_tokens.tolist() == [1]   # 4 -> 2 -> 1


def test_runtime_vtm_without_scorers_is_refused():
    model = _video_encoder(tome_r=2)
    model.config.merge = "vtm"
    with pytest.raises(ValueError, match="saliency scorers"):
        model(pixel_values=torch.zeros(1, 3, 2, 8, 8))
