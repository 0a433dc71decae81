"""Behaviour of the four quantizers: straight-through gradients, exact inverses, entropy maths, codebook learning."""

import itertools
import math

import pytest
import torch

from mmtok.quantizers import FSQ, LFQ, QuantizerOutput, ResidualVQ, VectorQuantizer


def make(kind: str):
    """One small instance of each quantizer (with and without projections)."""
    return {
        "lfq": lambda: LFQ(codebook_size=2 ** 8),
        "lfq_proj": lambda: LFQ(dim=12, codebook_size=2 ** 6),
        "bsq": lambda: LFQ(dim=16, codebook_size=2 ** 10, spherical=True),
        "fsq": lambda: FSQ(levels=[8, 5, 5, 5]),
        "fsq_proj": lambda: FSQ(levels=[7, 5, 4], dim=10),
        "vq": lambda: VectorQuantizer(dim=8, codebook_size=32, kmeans_init=True),
        "vq_cos_learned": lambda: VectorQuantizer(dim=8, codebook_size=32, use_cosine_sim=True, ema_update=False),
        "vq_proj": lambda: VectorQuantizer(dim=12, codebook_size=32, codebook_dim=4),
        "rvq": lambda: ResidualVQ(dim=8, num_quantizers=3, codebook_size=16),
        "rvq_proj": lambda: ResidualVQ(dim=12, num_quantizers=3, codebook_size=16, codebook_dim=6),
    }[kind]()


KINDS = ["lfq", "lfq_proj", "bsq", "fsq", "fsq_proj", "vq", "vq_cos_learned", "vq_proj", "rvq", "rvq_proj"]


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_gradients_reach_input(kind):
    torch.manual_seed(0)
    q = make(kind).train()
    z = torch.randn(4, 6, q.dim, requires_grad=True)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == z.shape
    assert out.loss.dim() == 0
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0
    if kind in ("lfq", "fsq", "vq", "rvq"):  # no projections: identity straight-through for the quantizer itself
        if kind == "fsq":
            assert (z.grad != 0).float().mean() > 0.5  # through the tanh bound
        else:
            torch.testing.assert_close(z.grad, upstream)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead", [(7,), (2, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("train", [False, True])
def test_indices_to_codes_is_exact_inverse(kind, lead, train):
    torch.manual_seed(1)
    q = make(kind)
    q.train(train)
    z = torch.randn(*lead, q.dim)
    out = q(z)
    expected_index_shape = (*lead, q.num_quantizers) if isinstance(q, ResidualVQ) else lead
    assert out.indices.shape == expected_index_shape
    assert out.indices.dtype == torch.long
    codes = q.indices_to_codes(out.indices)
    assert codes.shape == z.shape
    if train and isinstance(q, (VectorQuantizer, ResidualVQ)):
        # a training forward moved the codebook after quantizing; quantize again with the updated codebook
        q.eval()
        out = q(z)
        codes = q.indices_to_codes(out.indices)
    assert torch.equal(codes, out.quantized)


def brute_force_entropies(x: torch.Tensor, scale: float, inv_temperature: float):
    """Per-sample and codebook entropy over an explicitly enumerated {+-scale}^d codebook."""
    d = x.shape[-1]
    codebook = torch.tensor(list(itertools.product([-scale, scale], repeat=d)), dtype=torch.float64)
    dist = ((x.double()[:, None, :] - codebook[None]) ** 2).sum(-1)       # [N, 2^d]
    probs = torch.softmax(-inv_temperature * dist, dim=-1)
    per_sample = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    avg = probs.mean(0)
    codebook_entropy = -(avg * avg.clamp_min(1e-30).log()).sum()
    return per_sample, codebook_entropy


def test_lfq_exact_entropy_matches_brute_force():
    torch.manual_seed(2)
    q = LFQ(codebook_size=2 ** 6, inv_temperature=0.7, entropy_group_bits=6)
    x = torch.randn(50, 6)
    per_sample, codebook = q.entropy_terms(x)
    ref_per_sample, ref_codebook = brute_force_entropies(x, 1.0, 0.7)
    assert per_sample.item() == pytest.approx(ref_per_sample.item(), rel=1e-4)
    assert codebook.item() == pytest.approx(ref_codebook.item(), rel=1e-4)


def test_lfq_factorized_entropy_is_sum_of_group_entropies():
    torch.manual_seed(3)
    q = LFQ(codebook_size=2 ** 7, inv_temperature=0.5, entropy_group_bits=3)  # groups of 3, 3, 1 bits
    x = torch.randn(40, 7)
    _, codebook = q.entropy_terms(x)
    expected = sum(brute_force_entropies(part, 1.0, 0.5)[1] for part in x.split(3, dim=-1))
    assert codebook.item() == pytest.approx(expected.item(), rel=1e-4)
    # the exact joint entropy never exceeds the sum of the marginals' (subadditivity)
    assert brute_force_entropies(x, 1.0, 0.5)[1].item() <= codebook.item() + 1e-6


def test_lfq_indices_are_sign_bits():
    q = LFQ(codebook_size=2 ** 4).eval()
    z = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, 1.0], [2.0, 3.0, 4.0, 5.0]])
    out = q(z)
    assert out.indices.tolist() == [0, 1, 14, 15]
    assert torch.equal(out.quantized, torch.sign(z))


def test_bsq_codes_lie_on_unit_sphere():
    q = LFQ(codebook_size=2 ** 9, spherical=True).eval()
    out = q(torch.randn(100, 9))
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(100))


def test_lfq_entropy_annealing_schedule():
    q = LFQ(codebook_size=2 ** 4, entropy_loss_weight=0.1, entropy_anneal_steps=10, entropy_anneal_factor=3.0)
    assert q.entropy_weight() == pytest.approx(0.3)
    q.train()
    for _ in range(5):
        q(torch.randn(8, 4))
    assert q.entropy_weight() == pytest.approx(0.2)
    for _ in range(10):
        q(torch.randn(8, 4))
    assert q.entropy_weight() == pytest.approx(0.1)
    assert int(q.state_dict()["num_steps"]) == 15  # saved, so a resumed run continues the schedule


def test_lfq_entropy_loss_spreads_a_collapsed_batch_over_the_codebook():
    torch.manual_seed(4)
    q = LFQ(codebook_size=2 ** 6, commitment_loss_weight=0.0, entropy_loss_weight=1.0, inv_temperature=10.0).train()
    x = torch.nn.Parameter(0.05 + 0.01 * torch.randn(256, 6))  # every vector starts on the same code
    assert q(x).metrics["utilization"].item() == pytest.approx(1 / 64)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        q(x).loss.backward()
        opt.step()
    assert q(x).metrics["utilization"].item() > 0.5


def test_fsq_round_trip_over_all_codes():
    q = FSQ(levels=[8, 5, 5, 3])
    all_indices = torch.arange(q.codebook_size)
    codes = q.indices_to_codes(all_indices)
    assert torch.equal(q.codes_to_indices(codes), all_indices)
    assert len({tuple(c) for c in codes.tolist()}) == q.codebook_size  # every index a distinct grid point
    # large inputs saturate to the extreme levels and stay inside the grid
    out = q.train()(torch.randn(5000, 4) * 10)
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size
    assert out.metrics["utilization"] > 0.05
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("kind", ["lfq", "fsq", "vq", "rvq"])
def test_usage_metrics_are_right_in_training_and_skipped_in_eval(kind):
    q = make(kind).train()
    out = q(torch.randn(300, q.dim))
    idx = out.indices.reshape(-1, q.num_quantizers) if kind == "rvq" else out.indices.reshape(-1, 1)
    first = idx[:, 0]
    counts = torch.bincount(first, minlength=q.codebook_size).float()
    probs = counts[counts > 0] / counts.sum()
    if kind != "rvq":  # residual VQ reports the mean over its stages
        assert out.metrics["utilization"].item() == pytest.approx((counts > 0).float().mean().item())
        assert out.metrics["perplexity"].item() == pytest.approx(torch.exp(-(probs * probs.log()).sum()).item(),
                                                                 rel=1e-4)
    assert 0 < out.metrics["utilization"].item() <= 1
    q.eval()
    metrics = q(torch.randn(300, q.dim)).metrics
    assert "utilization" not in metrics and "perplexity" not in metrics


@pytest.mark.parametrize("kind", ["lfq", "fsq", "vq"])
def test_usage_metrics_read_like_a_dict_and_pass_through_accelerate_lazily(kind):
    """accelerate's bf16 output conversion rebuilds every Mapping in a model's output (and would compute the code
    histogram each step to do it): the usage metrics pass through it unread, then read like a dict."""
    from accelerate.utils import convert_to_fp32

    out = make(kind).train()(torch.randn(50, make(kind).dim))
    converted = convert_to_fp32(out)
    assert converted.metrics is out.metrics and out.metrics._values is None     # untouched and still lazy
    as_dict = dict(out.metrics)
    assert {**out.metrics}.keys() == as_dict.keys() == set(out.metrics.keys()) >= {"utilization", "perplexity"}
    assert "utilization" in out.metrics and out.metrics.get("missing") is None
    assert [k for k, _ in out.metrics.items()] == list(out.metrics) and len(out.metrics.values()) == len(as_dict)


def test_vq_ema_codebook_moves_towards_the_data():
    torch.manual_seed(5)
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
    q = VectorQuantizer(dim=2, codebook_size=4, decay=0.8, kmeans_init=False).train()

    def distance_to_centers():
        return torch.cdist(centers, q.embed).min(dim=1).values.mean().item()

    before = distance_to_centers()
    for _ in range(40):
        data = centers[torch.randint(0, 4, (256,))] + 0.1 * torch.randn(256, 2)
        q(data)
    assert distance_to_centers() < 0.5 * before
    assert distance_to_centers() < 2.5


def test_vq_kmeans_init_uses_the_codebook():
    torch.manual_seed(6)
    q = VectorQuantizer(dim=4, codebook_size=16, kmeans_init=True).train()
    assert not bool(q.initted)
    out = q(torch.randn(512, 4) * 3)
    assert bool(q.initted)
    assert out.metrics["utilization"].item() > 0.9


def test_vq_dead_code_is_revived():
    torch.manual_seed(7)
    q = VectorQuantizer(dim=2, codebook_size=8, decay=0.5, threshold_ema_dead_code=1.0).train()
    with torch.no_grad():
        q.embed[7] = torch.tensor([100.0, 100.0])  # far from all data: never chosen
        q.embed_avg[7] = q.embed[7] * q.cluster_size[7]
    for _ in range(10):
        q(torch.randn(128, 2))
    assert q.embed[7].norm() < 10.0  # re-seeded from a batch vector
    q.eval()
    used = torch.unique(q(torch.randn(4096, 2)).indices)
    assert 7 in used.tolist()


def test_rvq_quantizer_dropout_uses_fewer_stages():
    torch.manual_seed(8)
    q = ResidualVQ(dim=4, num_quantizers=6, codebook_size=8, quantize_dropout=True,
                   quantize_dropout_cutoff_index=1).train()
    used = []
    for _ in range(30):
        out = q(torch.randn(64, 4))
        per_stage_active = (out.indices >= 0).all(dim=0)         # [6]
        n = int(per_stage_active.sum())
        assert per_stage_active[:n].all() and not per_stage_active[n:].any()  # a prefix of stages
        assert (out.indices[:, n:] == -1).all()
        used.append(n)
    assert min(used) >= 2 and min(used) < 6 and max(used) == 6
    q.eval()
    assert (q(torch.randn(64, 4)).indices >= 0).all()  # no dropout outside training


def test_rvq_prefix_decoding_and_error_falls_with_more_stages():
    torch.manual_seed(9)
    q = ResidualVQ(dim=8, num_quantizers=4, codebook_size=32).train()
    for _ in range(10):
        q(torch.randn(512, 8))
    q.eval()
    z = torch.randn(256, 8)
    full = q(z)
    errors = []
    for k in range(1, 5):
        prefix = q(z, num_quantizers=k)
        assert prefix.indices.shape == (256, k)
        assert torch.equal(prefix.indices, full.indices[:, :k])
        assert torch.equal(q.indices_to_codes(full.indices[:, :k]), prefix.quantized)
        errors.append((prefix.quantized - z).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize("kind", ["lfq", "fsq", "vq", "rvq"])
def test_bad_inputs_raise_clear_errors(kind):
    q = make(kind)
    with pytest.raises(ValueError, match="channel-last"):
        q(torch.randn(3, q.dim + 1))
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.ones(3, q.dim, dtype=torch.long))
    bad = torch.full((3, q.num_quantizers) if kind == "rvq" else (3,), q.codebook_size)
    with pytest.raises(ValueError, match="must lie in"):
        q.indices_to_codes(bad)
    with pytest.raises(TypeError, match="integer"):
        q.indices_to_codes(bad.float())


def test_constructor_errors():
    with pytest.raises(ValueError, match="power of two"):
        LFQ(codebook_size=1000)
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels=[8, 1])
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualVQ(dim=4, num_quantizers=4)(torch.randn(2, 4), num_quantizers=5)
    with pytest.raises(TypeError):
        LFQ(8)  # keyword-only


def test_lfq_scales_to_a_2_pow_20_codebook_without_a_full_codebook_tensor():
    torch.manual_seed(10)
    q = LFQ(codebook_size=2 ** 20).train()
    z = torch.randn(4096, 20, requires_grad=True)
    out = q(z)
    out.loss.backward()
    assert out.indices.max() < 2 ** 20
    assert math.isfinite(out.loss.item())
    # the codebook entropy is bounded by the sum of its sub-codebooks' maxima: 20 bits in nats
    assert 0 < out.metrics["codebook_entropy"].item() <= 20 * math.log(2) + 1e-4
