"""PatchEncoderConfig: presets, JSON round trip, refused combinations with the reason named."""

import pytest
import torch

from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel


@pytest.mark.parametrize("modality", ["video", "audio", "text"])
def test_presets_build_for_every_modality(modality):
    cfg = PatchEncoderConfig.from_preset("debug", modality=modality)
    assert cfg.modality == modality and cfg.preset == "debug" and cfg.hidden_size == 32
    assert PatchEncoderConfig.from_preset("base").hidden_size == 768
    with pytest.raises(ValueError, match="unknown patch encoder preset"):
        PatchEncoderConfig.from_preset("huge")


def test_json_round_trip_keeps_every_switch():
    cfg = PatchEncoderConfig.from_preset("debug", tome_r=3, merge="vtm", stts_frames=0.5, stts_regions=2,
                                         pad_token_id=None, packed_attention="per_clip")
    back = PatchEncoderConfig.from_dict(cfg.to_dict())
    for key in ("tome_r", "merge", "stts_frames", "stts_regions", "max_grid", "packed_attention", "rlt_threshold"):
        assert getattr(back, key) == getattr(cfg, key)
    assert isinstance(back.stts_frames, float) and isinstance(back.stts_regions, int)


@pytest.mark.parametrize("overrides, message", [
    (dict(attention="divided", rlt_threshold=0.1), "divided space-time attention needs every clip's full"),
    (dict(attention="divided", tome_r=2), "token merging"),
    (dict(attention="divided", stts_regions=4), "STTS regions"),
    (dict(rlt_threshold=0.1, stts_frames=2), "RLT and STTS cannot be combined"),
    (dict(modality="audio", rlt_threshold=0.1), "tubelet grid; modality='audio'"),
    (dict(modality="text", attention="divided"), "modality='text' has none"),
    (dict(modality="audio", stts_frames=2), "STTS"),
    (dict(modality="image"), "modality must be one of"),
    (dict(merge="pitome"), "merge must be one of"),
    (dict(tome_r=-1), "tome_r must be an int >= 0"),
    (dict(stts_frames=0), "stts_frames must be None"),
    (dict(stts_regions=1.5), "stts_regions must be None"),
    (dict(stts_frames=1, stts_layer=2), "stts_layer must be in"),
    (dict(hidden_size=33), "not a multiple of num_attention_heads"),
    (dict(max_grid=[4, 4]), "max_grid must be"),
    (dict(rlt_threshold=-0.1), "rlt_threshold must be >= 0"),
])
def test_refused_settings_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        PatchEncoderConfig.from_preset("debug", **overrides)


def test_allowed_combinations_build():
    for overrides in (dict(rlt_threshold=0.1, tome_r=2), dict(rlt_threshold=0.1, tome_r=2, merge="vtm"),
                      dict(attention="divided", stts_frames=2), dict(stts_frames=2, stts_regions=4, tome_r=1),
                      dict(modality="text", tome_r=2), dict(modality="audio", tome_r=2, merge="vtm")):
        PatchEncoderConfig.from_preset("debug", **overrides)


def test_runtime_switches_are_validated_at_forward():
    model = PatchEncoderModel(PatchEncoderConfig.from_preset("debug", attention="divided"))
    model.config.tome_r = 2
    with pytest.raises(ValueError, match="divided space-time attention"):
        model(pixel_values=torch.zeros(1, 3, 2, 8, 8))
