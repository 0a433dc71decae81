"""Synthetic token data: a pure function of (seed, step), one global batch however it is split, fixed eval batches."""

from __future__ import annotations

import pytest
import torch

from mmtok.data.synthetic import SyntheticConfig, SyntheticTokenData, synthetic_vocabulary

CONFIG = SyntheticConfig(num_examples=10)
TASKS = {"t2v": 1.0, "v2a": 1.0, "v2t": 1.0}


def source(**kwargs) -> SyntheticTokenData:
    kwargs = {"tasks": TASKS, "batch_size": 4, "max_length": 256, "seed": 3, **kwargs}
    return SyntheticTokenData(synthetic_vocabulary(CONFIG), CONFIG, **kwargs)


def rows(batches: list[dict]) -> list[list[int]]:
    """The unpadded sequences of ``batches``, in order."""
    return [ids[mask.bool()].tolist() for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]


def test_same_settings_same_batches_and_the_global_batch_does_not_depend_on_the_split():
    whole = rows(source().micro_batches(3))                        # step 3 crosses the first epoch (10 examples)
    assert len(whole) == 4 and whole == rows(source().micro_batches(3))
    assert whole != rows(source(seed=4).micro_batches(3))
    accumulated = rows(source(batch_size=2, grad_accum=2).micro_batches(3))
    ranks = rows(source(batch_size=2, world_size=2, rank=0).micro_batches(3)) + rows(
        source(batch_size=2, world_size=2, rank=1).micro_batches(3))
    assert accumulated == whole and ranks == whole


def test_eval_batches_per_task_and_bad_settings():
    data = source(tasks={"t2v": 1.0, "v2a": 0.0}, eval_batches=2)
    evals = data.eval_batches()
    assert list(evals) == ["t2v"] and len(evals["t2v"]) == 2                  # weight-0 tasks are left out
    assert all(task == "t2v" for b in evals["t2v"] for task in b["tasks"])
    assert not any(b["condition_dropped"].any() for b in evals["t2v"])      # no condition dropout in evaluation
    assert torch.equal(evals["t2v"][0]["input_ids"], source(tasks={"t2v": 1.0}).eval_batches()["t2v"][0]["input_ids"])
    with pytest.raises(ValueError, match="positive sum"):
        source(tasks={"t2v": 0.0})
    with pytest.raises(ValueError, match="max_length=8"):
        source(max_length=8).micro_batches(0)
