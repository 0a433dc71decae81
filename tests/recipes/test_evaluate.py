"""recipes/evaluate.py: the sampling settings of each generation task. (The Moving-Digits scoring it strings together
is tested in tests/mmtok/datasets/test_moving_digits_evaluation.py, the metric records and tables in
tests/mmtok/test_metrics.py.)"""

from __future__ import annotations


def test_t2v_sampling_applies_to_text_to_video_only():
    from pathlib import Path

    from recipes.common import load_config
    from recipes.evaluate import EvalConfig, _sampling_kwargs

    demo = load_config(EvalConfig, Path(__file__).parents[2] / "recipes/configs/evaluate_demo.yaml")
    t2v, v2a = _sampling_kwargs(demo, 3, "t2v"), _sampling_kwargs(demo, 3)
    assert (t2v["temperature"], t2v["cfg_scale"]) == (demo.t2v_sampling.temperature, demo.t2v_sampling.cfg_scale)
    assert (v2a["temperature"], v2a["cfg_scale"]) == (demo.sampling.temperature, demo.sampling.cfg_scale)
    assert t2v != v2a and t2v["seed"] == demo.t2v_sampling.seed + 3
    plain = load_config(EvalConfig, overrides=["sampling.temperature=0.5"])
    assert plain.t2v_sampling is None and _sampling_kwargs(plain, 0, "t2v") == _sampling_kwargs(plain, 0)
    assert _sampling_kwargs(plain, 0, "t2v")["temperature"] == 0.5
