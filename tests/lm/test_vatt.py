"""VATT (lm.modeling_vatt): presets, shapes, DropToken, the loss and its wiring, save / load, switches, bad inputs."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

import lm  # noqa: F401  (registers VATT with the Auto classes)
from lm.alignment_losses import mil_nce_loss, nce_loss
from lm.configuration_vatt import TRANSFORMER_FIELDS, VATTConfig
from lm.modeling_vatt import VATTModel, drop_tokens_packed, pad_text_ids
from mmtok.encoders import Embedded, Packing
from mmtok.pretrained import WeightsMismatchError

SAMPLES = 16000                                                          # 1 s: 32 audio tokens of the debug preset


def _model(**overrides) -> VATTModel:
    return VATTModel.from_preset("debug", **overrides).eval()


def _inputs(b=3, captions_per_clip=2, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (b * captions_per_clip, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0                                                      # one shorter caption
    return dict(pixel_values=torch.rand(b, 3, frames, 16, 16, generator=g) * 2 - 1,
                input_values=torch.randn(b, SAMPLES, generator=g) * 0.1, input_ids=ids, attention_mask=mask,
                text_clip=torch.arange(b).repeat_interleave(captions_per_clip))


# ---------------------------------------------------------------------------------------------------- config
def test_presets_and_tower_overrides():
    debug = VATTConfig.from_preset("debug")
    assert debug.video_config.hidden_size == 32 and debug.audio_config.audio_patch_size == 500
    assert (debug.va_dim, debug.vt_dim, debug.droptoken) == (32, 16, 0.5)
    demo = VATTConfig.from_preset("demo", video_config={"tome_r": 4}, droptoken=0.0)
    assert demo.video_config.patch_size == 8 and demo.video_config.tome_r == 4 and demo.droptoken == 0.0
    assert demo.text_config.num_hidden_layers == 2 and demo.video_config.num_hidden_layers == 4
    shared = VATTConfig.from_preset("demo", shared_backbone=True)          # audio / text take the video transformer
    for name in TRANSFORMER_FIELDS:
        assert getattr(shared.text_config, name) == getattr(shared.video_config, name)
    assert shared.text_config.vocab_size == 256 and shared.audio_config.audio_patch_size == 500   # own tokenizers
    with pytest.raises(ValueError, match="unknown VATT preset"):
        VATTConfig.from_preset("huge")


def test_config_json_round_trip():
    config = VATTConfig.from_preset("debug", shared_backbone=True, video_config={"rlt_threshold": 0.1})
    back = VATTConfig(**config.to_dict())
    assert back.to_dict() == config.to_dict() and back.video_config.rlt_threshold == 0.1 and back.shared_backbone


@pytest.mark.parametrize("kwargs, message", [
    (dict(video_config={"attention": "divided"}), "DropToken leaves each clip a random subset"),
    (dict(video_config={"attention": "divided"}, droptoken=0.0, shared_backbone=True), "use attention='joint'"),
    (dict(shared_backbone=True, audio_config={"tome_r": 2}), "the token-reduction switches are the video tower's"),
    (dict(audio_config={"modality": "video"}), "audio_config must describe a audio encoder"),
    (dict(text_config=3), "must be a PatchEncoderConfig or a dict"),
    (dict(droptoken=1.0), "droptoken"),
    (dict(va_dim=0), "va_dim"),
    (dict(video_config={"tome_r": -1}), "tome_r must be an int >= 0"),
])
def test_bad_configs_name_the_problem(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        VATTConfig.from_preset("debug", **kwargs)


# ---------------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("shared", [False, True])
def test_forward_shapes_norms_and_loss(shared):
    model = _model(shared_backbone=shared)
    out = model(**_inputs())
    assert out.video_pooled.shape == (3, 32) and out.audio_pooled.shape == (3, 32) and out.text_pooled.shape == (6, 32)
    assert out.video_va.shape == (3, 32) and out.video_vt.shape == (3, 16) and out.audio_va.shape == (3, 32)
    assert out.text_vt.shape == (6, 16)
    for emb in (out.video_va, out.video_vt, out.audio_va, out.text_vt):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[0]))
    assert out.video_num_tokens.tolist() == [32] * 3 and out.audio_num_tokens.tolist() == [32] * 3   # 2x4x4 tubelets
    assert torch.isfinite(out.loss) and out.loss_va is not None and out.loss_vt is not None
    assert float(out.temperature) == pytest.approx(0.07)
    assert model(pixel_values=_inputs()["pixel_values"]).loss is None                     # no pair, no loss
    assert model(**_inputs(), return_loss=False).loss is None
    assert isinstance(model(**_inputs(), return_dict=False), tuple)
    assert model.embed_video(_inputs()["pixel_values"], space="pooled").shape == (3, 32)


def test_the_loss_is_nce_plus_mil_nce_over_all_captions_of_a_clip():
    model = _model()
    inputs = _inputs(b=3, captions_per_clip=2)
    out = model(**inputs)
    scale = model.projections.logit_scale
    positives = inputs["text_clip"][None, :] == torch.arange(3)[:, None]                # [clips, captions]
    torch.testing.assert_close(out.loss_va, nce_loss(out.video_va, out.audio_va, scale))
    torch.testing.assert_close(out.loss_vt, mil_nce_loss(out.video_vt, out.text_vt, positives, scale))
    torch.testing.assert_close(out.loss, out.loss_va + out.loss_vt)
    # a clip drawn twice (same clip id) counts once
    doubled = {k: torch.cat([v, v[:1]]) if k in ("pixel_values", "input_values") else v for k, v in inputs.items()}
    again = model(**doubled, clip_ids=[0, 1, 2, 0])
    torch.testing.assert_close(again.loss_va, out.loss_va, rtol=1e-5, atol=1e-6)


def test_droptoken_only_in_training_and_packed_per_clip():
    model = _model(video_config={"rlt_threshold": 0.05})                # RLT: clips keep different token counts
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    video[1, :, 1:] = video[1, :, :1]                                    # clip 1 is still: RLT keeps its first step
    kept = model(pixel_values=video).video_num_tokens.tolist()
    assert kept == [32, 16]
    model.train()
    dropped = model(pixel_values=video).video_num_tokens.tolist()
    assert dropped == [16, 8]                                            # round((1 - 0.5) * n) of each clip
    assert model(input_values=torch.randn(2, SAMPLES)).audio_num_tokens.tolist() == [16, 16]
    model.eval()
    a, b = model.embed_video(video), model.embed_video(video)
    assert torch.equal(a, b)                                             # eval: no randomness


def test_drop_tokens_packed_keeps_order_sizes_and_clips():
    tokens = torch.arange(10.0)[:, None].expand(10, 4)
    emb = Embedded(tokens, torch.arange(10.0) + 1, Packing.from_lengths(torch.tensor([6, 1, 3])), None)
    out = drop_tokens_packed(emb, 0.5, torch.Generator().manual_seed(0))
    assert out.packing.counts == (3, 1, 2) and out.grid is None         # 1 token always kept
    rows = out.tokens[:, 0].long()
    assert torch.equal(out.sizes, rows.float() + 1)                      # sizes travel with their tokens
    first, second, third = rows.split(out.packing.counts)
    assert (first < 6).all() and second.tolist() == [6] and (third >= 7).all()
    assert (first.diff() > 0).all() and (third.diff() > 0).all()         # order kept


def test_loss_falls_on_a_tiny_set():
    # four clips of their own noise video and audio, two captions each (ids of their own, one word shared by two)
    b = 4
    g = torch.Generator().manual_seed(1)
    video, audio = torch.rand(b, 3, 4, 16, 16, generator=g) * 2 - 1, torch.randn(b, SAMPLES, generator=g) * 0.3
    ids, mask = pad_text_ids([[1 + i, 20 + i, 40 + i % 2] for i in range(b)] + [[60 + i, 80 + i] for i in range(b)])
    text_clip = torch.arange(b).repeat(2)
    model = VATTModel.from_preset("debug").train()                         # DropToken on
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        out = model(pixel_values=video, input_values=audio, input_ids=ids, attention_mask=mask, text_clip=text_clip)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("shared", [False, True])
def test_from_pretrained_round_trip_gives_the_same_embeddings(tmp_path, shared):
    model = _model(shared_backbone=shared, audio_config={"audio_input": "log_mel", "audio_patch_size": 4,
                                                          "mel_n_fft": 400, "mel_hop_length": 125, "mel_bins": 16})
    with torch.no_grad():
        model.projections.log_logit_scale.fill_(math.log(20.0))
    model.save_pretrained(tmp_path)
    loaded = VATTModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(auto, VATTModel) and isinstance(AutoConfig.from_pretrained(tmp_path), VATTConfig)
    inputs = _inputs()
    ref = model(**inputs)
    for other in (loaded, auto):
        out = other(**inputs)
        for key in ("video_va", "video_vt", "audio_va", "text_vt", "loss"):
            torch.testing.assert_close(getattr(out, key), getattr(ref, key), rtol=0, atol=0)


def test_video_switches_add_their_parts_and_run_training_free(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    video = _inputs()["pixel_values"]
    plain = model(pixel_values=video)
    rlt = VATTModel.from_pretrained(tmp_path, video_switches={"rlt_threshold": 0.0}).eval()
    assert rlt.video_model.embeddings.run_length.weight.abs().sum() == 0   # zero-init: training-free RLT
    torch.testing.assert_close(rlt(pixel_values=video).video_va, plain.video_va, rtol=1e-5, atol=1e-5)
    vtm = VATTModel.from_pretrained(tmp_path, video_switches={"tome_r": 4, "merge": "vtm"}).eval()
    assert vtm(pixel_values=video).video_num_tokens.tolist() == [24] * 3    # 32 - 2 blocks x 4
    stts = VATTModel.from_pretrained(tmp_path, video_switches={"stts_frames": 1}).eval()
    assert stts(pixel_values=video).video_num_tokens.tolist() == [16] * 3
    model.config.video_config.tome_r = 2                                   # a switch without new parts: on the fly
    assert model(pixel_values=video).video_num_tokens.tolist() == [28] * 3
    with pytest.raises(ValueError, match="change the architecture"):
        VATTModel.from_pretrained(tmp_path, video_switches={"hidden_size": 64})
    with pytest.raises(WeightsMismatchError):
        VATTModel.from_pretrained(tmp_path, shared_backbone=True)


# ----------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("change, message", [
    (dict(pixel_values=None, input_values=None, input_ids=None, attention_mask=None, text_clip=None),
     "pass at least one of"),
    (dict(input_values=torch.zeros(2, SAMPLES)), "input_values holds 2 clips but pixel_values holds 3"),
    (dict(text_clip=None), "6 captions for 3 clips: pass text_clip"),
    (dict(text_clip=torch.tensor([0, 0, 1, 1, 2, 3])), r"text_clip indices must lie in \[0, 3\)"),
    (dict(text_clip=torch.tensor([0, 1])), "one clip index per caption"),
    (dict(input_ids=None), "attention_mask belongs to input_ids"),
    (dict(pixel_values=None), "text_clip pairs captions with video clips"),
    (dict(input_values=torch.zeros(3, 1100)), "multiple of 500"),
    (dict(pixel_values=torch.zeros(3, 16, 16, 4, 3)), "channel-last"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        _model()(**{**_inputs(), **change})


def test_stts_cannot_train_under_droptoken_and_spaces_are_checked():
    model = _model(video_config={"stts_frames": 1}).train()
    with pytest.raises(ValueError, match="train with droptoken=0 to fine-tune STTS"):
        model(pixel_values=_inputs()["pixel_values"])
    with pytest.raises(ValueError, match="space must be one of"):
        _model().embed_audio(torch.zeros(1, SAMPLES), space="vt")
    with pytest.raises(ValueError, match="fewer than one audio token"):
        _model().usable_audio_length(100)
    assert _model().usable_audio_length(20250) == 20000
