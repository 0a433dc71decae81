"""The linear probe of lm.vatt_evaluation: accuracy, training accuracy, chance and confusion on constructed features."""

import pytest
import torch

from lm.vatt_evaluation import linear_probe


def _blobs(n_per_class: int, classes: int, dim: int, *, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 4.0
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_separable_classes_are_read_exactly_with_a_diagonal_confusion():
    x, y = _blobs(20, 4, 6, spread=0.3, seed=0)
    xt, yt = _blobs(5, 4, 6, spread=0.3, seed=1)
    result = linear_probe(x, y, xt, yt)
    assert result.accuracy == 1.0 and result.train_accuracy == 1.0
    assert result.chance == 0.25                       # classes are balanced: the majority class is a quarter of test
    assert torch.equal(result.confusion, torch.diag(torch.full((4,), 5)))


def test_a_feature_blind_to_a_pair_confuses_exactly_that_pair():
    # classes 0 and 1 share their features (a tower that cannot tell left from right); 2 and 3 are distinct
    x, y = _blobs(30, 4, 6, spread=0.3, seed=0)
    xt, yt = _blobs(10, 4, 6, spread=0.3, seed=1)
    x[y == 1], xt[yt == 1] = x[y == 0][: (y == 1).sum()], xt[yt == 0][: (yt == 1).sum()]
    result = linear_probe(x, y, xt, yt)
    confusion = result.confusion
    assert confusion.sum() == len(yt) and confusion.dtype == torch.int64
    assert confusion[2, 2] == 10 and confusion[3, 3] == 10
    assert confusion[:2, 2:].sum() == 0 and confusion[2:, :2].sum() == 0     # errors stay inside the blind pair
    assert confusion[:2, :2].sum() == 20 and confusion[0, 0] + confusion[1, 1] <= 15
    assert result.train_accuracy < 0.85                # the features lack the pair: even the fitted rows miss it
    assert result.accuracy == pytest.approx(float(confusion.diag().sum()) / len(yt))


def test_bad_inputs_are_named():
    x, y = _blobs(4, 2, 3, spread=0.1, seed=0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        linear_probe(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="one label per feature row"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match=">= 2 train"):
        linear_probe(x[:1], y[:1], x, y)
    with pytest.raises(ValueError, match=">= 0"):
        linear_probe(x, y - 1, x, y)
