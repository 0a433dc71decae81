"""STTS: differentiable top-K in training, hard top-K at inference, exactly K tokens kept."""

import pytest
import torch

from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel
from mmtok.encoders.token_selection import hard_topk, perturbed_topk, select_topk


def test_perturbed_topk_is_a_soft_indicator_that_hardens_with_clear_scores():
    soft = perturbed_topk(torch.tensor([[0.5, 0.52, 0.48, 0.1]]), 2, num_samples=200, sigma=0.05)
    assert soft.shape == (1, 2, 4)
    torch.testing.assert_close(soft.sum(-1), torch.ones(1, 2))
    assert 0 < soft[0, 0, 0] < 1                                          # near-tied items share the slots
    hard = perturbed_topk(torch.tensor([[0.0, 1.0, 0.2, 0.9]]), 2, num_samples=50, sigma=0.01)
    assert torch.equal(hard[0], torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_perturbed_topk_gradient_points_the_right_way():
    scores = torch.tensor([[0.50, 0.51, 0.49, 0.0]], requires_grad=True)
    indicators = perturbed_topk(scores, 1, num_samples=2000, sigma=0.05)   # [1, 1, 4]
    indicators[0, 0, 0].backward()                                         # how often item 0 is the one kept
    grad = scores.grad[0]
    assert grad[0] > 0 and grad[1] < 0 and grad[2] < 0                     # raise item 0, lower its rivals
    assert abs(grad[3]) < grad[0] / 5                                      # an item never near the top barely counts


def test_hard_topk_and_inference_selection_gather_the_best_items_in_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7], [5.0, -1.0, 2.0, 0.0]])
    assert hard_topk(scores, 2).tolist() == [[1, 3], [0, 2]]
    items = torch.arange(8.0).view(2, 4, 1)
    kept = select_topk(items, scores, 2, training=False, num_samples=10, sigma=0.05)
    assert kept.squeeze(-1).tolist() == [[1.0, 3.0], [4.0, 6.0]]


def _encoder(**overrides) -> PatchEncoderModel:
    return PatchEncoderModel(PatchEncoderConfig.from_preset("debug", modality="video", **overrides))


@pytest.mark.parametrize("training", [False, True])
def test_stts_keeps_exactly_k_tokens(training):
    # 8 frames of 16x16, 2x4x4 tubelets: a 4 x 4 x 4 grid; keep 2 frames, then 2 of the four 2x2 regions of each
    model = _encoder(stts_frames=2, stts_regions=2, stts_region_size=2).train(training)
    out = model(pixel_values=torch.rand(3, 3, 8, 16, 16) * 2 - 1)
    assert out.num_tokens.tolist() == [2 * 2 * 4] * 3 and out.last_hidden_state.shape == (48, 32)
    assert out.sizes.eq(1).all()


def test_stts_scorers_get_gradients_in_training():
    model = _encoder(stts_frames=0.5, stts_regions=0.25, stts_layer=1).train()
    out = model(pixel_values=torch.rand(2, 3, 8, 16, 16) * 2 - 1)
    assert out.num_tokens.tolist() == [2 * 4, 2 * 4]                       # half of 4 frames, a quarter of 16 cells
    out.pooler_output.square().sum().backward()
    for scorer in (model.stts.frame_scorer, model.stts.region_scorer):
        assert scorer.fc2.weight.grad is not None and scorer.fc2.weight.grad.abs().sum() > 0


def test_inference_keeps_the_frames_and_regions_the_scorers_rank_highest():
    model = _encoder(stts_frames=1, stts_regions=1, stts_region_size=2).eval()
    video = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    emb = model.embeddings(video, None)
    tokens = emb.tokens.view(1, *emb.grid, -1)                              # [1, 4, 4, 4, C]
    with torch.no_grad():
        frame = int(model.stts.frame_scorer(tokens.mean(dim=(2, 3))).argmax())
        cells = tokens[0, frame].view(2, 2, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(4, 4, -1)  # [region, 2x2, C]
        region = int(model.stts.region_scorer(cells.mean(1)[None]).argmax())
        kept = model.stts(tokens, 1, 1)                                     # [1, 1, 4, C]
    assert torch.equal(kept[0, 0], cells[region])


def test_divided_attention_works_with_the_frame_stage():
    model = _encoder(attention="divided", stts_frames=3).eval()
    out = model(pixel_values=torch.rand(2, 3, 8, 16, 16) * 2 - 1)
    assert out.num_tokens.tolist() == [3 * 16, 3 * 16]


def test_bad_stts_settings_are_refused():
    with pytest.raises(ValueError, match="stts_region_size=3 must divide"):
        _encoder(stts_regions=1, stts_region_size=3)(pixel_values=torch.zeros(1, 3, 2, 16, 16))
    with pytest.raises(ValueError, match="keeps 5 frames, but the input has only 4"):
        _encoder(stts_frames=5)(pixel_values=torch.zeros(1, 3, 8, 16, 16))
    model = _encoder(stts_frames=1)
    model.config.stts_regions = 2                                          # no region scorer was built
    with pytest.raises(ValueError, match="scorer was not built"):
        model(pixel_values=torch.zeros(1, 3, 8, 16, 16))
