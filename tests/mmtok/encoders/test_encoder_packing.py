"""Packed batches: layout helpers and attention confined to each clip."""

import pytest
import torch
import torch.nn.functional as F

from mmtok.encoders.packing import Packing, packed_attention


def _reference(q, k, v, counts, key_bias=None):
    """Attention run clip by clip, each on its own tensors."""
    outs = []
    bias = key_bias.split(counts) if key_bias is not None else [None] * len(counts)
    for qi, ki, vi, bi in zip(q.split(counts), k.split(counts), v.split(counts), bias):
        logits = torch.einsum("qhd,khd->hqk", qi, ki) / qi.shape[-1] ** 0.5
        if bi is not None:
            logits = logits + bi
        outs.append(torch.einsum("hqk,khd->qhd", logits.softmax(-1), vi))
    return torch.cat(outs)


def test_layout_helpers():
    packing = Packing.from_lengths(torch.tensor([3, 1, 2]))
    assert packing.counts == (3, 1, 2) and packing.total == 6 and packing.max_len == 3 and not packing.is_uniform
    assert packing.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert packing.segment_ids().tolist() == [0, 0, 0, 1, 2, 2]
    assert packing.valid_mask().tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    x = torch.arange(6.0)[:, None].expand(6, 4)
    padded = packing.pad(x, value=-1.0)                                                 # [3, 3, 4]
    assert padded[1, 1:].eq(-1).all() and torch.equal(padded[packing.valid_mask()], x)
    uniform = Packing.uniform(2, 3)
    assert uniform.is_uniform and uniform.cu_seqlens.tolist() == [0, 3, 6]
    assert uniform.pad(torch.arange(6.0)).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert packing.block_diagonal_mask().long().sum().item() == 9 + 1 + 4


@pytest.mark.parametrize("impl", ["padded", "block_mask", "per_clip"])
@pytest.mark.parametrize("counts", [(5, 2, 7), (4, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_attention_equals_attention_per_clip(impl, counts, with_bias):
    n = sum(counts)
    q, k, v = (torch.randn(n, 2, 8) for _ in range(3))
    bias = torch.rand(n).log() if with_bias else None
    packing = Packing.from_lengths(torch.tensor(counts))
    out = packed_attention(q, k, v, packing, key_bias=bias, impl=impl)
    torch.testing.assert_close(out, _reference(q, k, v, counts, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["padded", "block_mask", "per_clip"])
def test_attention_never_crosses_clips(impl):
    counts = (6, 3)
    q, k, v = (torch.randn(9, 2, 8) for _ in range(3))
    packing = Packing.from_lengths(torch.tensor(counts))
    base = packed_attention(q, k, v, packing, impl=impl)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[6:] = torch.randn(3, 2, 8) * 10                                               # clip 1 changed
    changed = packed_attention(q2, k2, v2, packing, impl=impl)
    torch.testing.assert_close(changed[:6], base[:6], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[6:], base[6:])


def test_uniform_batch_takes_the_batched_path_without_a_mask():
    q, k, v = (torch.randn(2 * 5, 2, 8) for _ in range(3))
    out = packed_attention(q, k, v, Packing.uniform(2, 5))
    ref = F.scaled_dot_product_attention(*(t.view(2, 5, 2, 8).transpose(1, 2) for t in (q, k, v)))
    assert torch.equal(out, ref.transpose(1, 2).reshape(10, 2, 8))


def test_unknown_impl_is_refused():
    q = torch.randn(3, 1, 4)
    with pytest.raises(ValueError, match="impl"):
        packed_attention(q, q, q, Packing.from_lengths(torch.tensor([2, 1])), impl="dense")
