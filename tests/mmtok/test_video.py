"""Tests of the causal video tokenizer (mmtok.video): shapes, causality, image/video agreement, save/load, errors,
and that the debug model learns to reconstruct a clip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from mmtok.interface import ModalityTokenizer, code_spec
from mmtok.metrics import psnr
from mmtok.video import PRESETS, VideoTokenizer, VideoTokenizerConfig
from mmtok.video.losses import reconstruction_loss
from mmtok.vocab import CodeSpec, UnifiedVocabulary


@pytest.fixture(scope="module")
def debug_model() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer.from_preset("debug").eval()


def moving_square(t: int = 9, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 [1, T, H, W, 3]: a coloured square moving diagonally on a dark background."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(120, 256, (3,), generator=g, dtype=torch.uint8)
    video = torch.full((1, t, size, size, 3), 20, dtype=torch.uint8)
    for i in range(t):
        y = x = i % (size - 5)
        video[0, i, y:y + 5, x:x + 5] = colour
    return video


def random_video(t: int, h: int, w: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("t,h,w,overrides,expected", [
    (1, 16, 16, {}, (1, 4, 4)),                       # an image
    (5, 16, 16, {}, (2, 4, 4)),
    (9, 16, 16, {}, (3, 4, 4)),
    (13, 8, 24, {}, (4, 2, 6)),                       # non-square
    (9, 16, 16, {"patch_size": 2}, (3, 2, 2)),        # space-to-depth stem: factor 8
    (9, 16, 16, {"temporal_downsample": [False, True]}, (5, 4, 4)),
])
def test_shape_table(t, h, w, overrides, expected):
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug", **overrides).eval()
    video = random_video(t, h, w)
    codes = model.encode(video)
    assert codes.shape == (2, *expected)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < model.codebook_size
    assert model.latent_shape(t, h, w) == expected
    recon = model.decode(codes)
    assert recon.shape == (2, 3, t, h, w)
    assert recon.dtype == torch.float32 and recon.abs().max() <= 1.0
    assert model.pixel_frames(expected[0]) == t


def test_float_and_uint8_inputs_agree(debug_model):
    video = random_video(5, 16, 16)
    as_float = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    assert torch.equal(debug_model.encode(video), debug_model.encode(as_float))
    as_float[1, 0, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"video holds NaN or infinite values in batch item\(s\) \[1\]"):
        debug_model.encode(as_float)


def test_presets_are_consistent():
    expected = {"debug": ((9, 16, 16), (3, 4, 4), 2 ** 6, "lfq"), "demo": ((9, 32, 32), (5, 4, 4), 2 ** 12, "fsq"),
                "demo_lfq": ((9, 32, 32), (5, 4, 4), 2 ** 12, "lfq"),
                "magvit2_128": ((17, 128, 128), (5, 16, 16), 2 ** 18, "lfq")}
    assert set(PRESETS) == set(expected)
    for name, (clip, latent, codebook, quantizer) in expected.items():
        cfg = VideoTokenizerConfig.from_preset(name)
        f, s = cfg.temporal_factor, cfg.spatial_factor
        assert (1 + (clip[0] - 1) // f, clip[1] // s, clip[2] // s) == latent, name
        assert cfg.codebook_size == codebook and cfg.bits_per_code == 12 if codebook == 2 ** 12 else True
        assert cfg.quantizer == quantizer
        assert cfg.latent_channels == (4 if quantizer == "fsq" else codebook.bit_length() - 1)
    with pytest.raises(ValueError, match="unknown video tokenizer preset"):
        VideoTokenizerConfig.from_preset("huge")


def test_demo_preset_shapes_and_size():
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("demo").eval()
    video = random_video(9, 32, 32, b=1)
    codes = model.encode(video)
    assert codes.shape == (1, 5, 4, 4)
    assert int(codes.max()) < 4096
    assert model.decode(codes).shape == (1, 3, 9, 32, 32)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000


# ---------------------------------------------------------------------------------------------- quantizer switch
QUANTIZER_OVERRIDES = {"lfq": {"quantizer": "lfq", "codebook_size": 2 ** 6},
                       "bsq": {"quantizer": "bsq", "codebook_size": 2 ** 6},
                       "fsq": {"quantizer": "fsq", "fsq_levels": [8, 5, 5]}}


@pytest.mark.parametrize("name", sorted(QUANTIZER_OVERRIDES))
def test_quantizer_switch_round_trips_and_saves(name, tmp_path):
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug", **QUANTIZER_OVERRIDES[name]).eval()
    expected_size = 200 if name == "fsq" else 64
    assert model.codebook_size == expected_size and code_spec(model).codebook_size == expected_size
    assert model.quantizer.__class__.__name__ == ("FSQ" if name == "fsq" else "LFQ")
    video = random_video(9, 16, 16)
    out = model(video)
    codes = model.encode(video)
    assert torch.equal(out.codes, codes) and codes.shape == (2, 3, 4, 4)
    assert 0 <= int(codes.min()) and int(codes.max()) < expected_size
    # indices -> codes is the exact inverse of quantization: re-quantizing the looked-up codes gives the indices
    latents = model.quantizer.indices_to_codes(codes)
    assert latents.shape == (2, 3, 4, 4, model.config.latent_channels)
    assert torch.equal(model.quantizer(latents).indices, codes)
    # every code decodes (the full range, not only the ones this clip used)
    every = torch.arange(expected_size).view(1, 1, 1, -1)[..., :16].reshape(1, 1, 4, 4)
    assert model.decode(every).shape == (1, 3, 1, 16, 16)
    # save / load: same config, same codes, same frames
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantizer"] == name and config["codebook_size"] == expected_size
    loaded = VideoTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.config.quantizer == name and loaded.codebook_size == expected_size
    assert torch.equal(loaded.encode(video), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    # the unified vocabulary lays out exactly codebook_size video ids and round-trips them
    vocab = UnifiedVocabulary(text=CodeSpec("text", 100), video=code_spec(loaded))
    ids = vocab.to_global("video", codes)
    assert len(vocab.range_of("video")) == expected_size
    assert all(vocab.modality_of(int(i)) == "video" for i in ids.flatten()[:8])
    assert torch.equal(vocab.to_local("video", ids), codes)


def test_fsq_quantizer_has_no_auxiliary_loss_and_lfq_does():
    torch.manual_seed(0)
    video = random_video(5, 16, 16)
    fsq = VideoTokenizer.from_preset("debug", **QUANTIZER_OVERRIDES["fsq"])
    lfq = VideoTokenizer.from_preset("debug")
    assert float(fsq(video).quantizer_loss.detach()) == 0.0
    assert float(lfq(video).quantizer_loss.detach()) != 0.0


def test_frame_stages_convolve_frames_independently():
    """With every stage per-frame and no temporal downsampling, each frame's codes depend on that frame only."""
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug", temporal_downsample=[False, False], frame_stages=3).eval()
    video = random_video(4, 16, 16, b=1)
    codes = model.encode(video)
    assert codes.shape == (1, 4, 4, 4)
    for t in range(4):
        assert torch.equal(model.encode(video[:, t:t + 1])[:, 0], codes[:, t])
    with pytest.raises(ValueError, match="temporal downsampling needs temporal convolutions"):
        VideoTokenizerConfig.from_preset("debug", frame_stages=2)


def test_demo_preset_is_causal():
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("demo").eval()
    video = random_video(9, 32, 32, b=1)
    codes = model.encode(video)                                       # latent frames: {0}, {1,2}, {3,4}, ...
    changed = video.clone()
    changed[:, 5:] = 255 - changed[:, 5:]                              # frames 5.. -> latent frames 3, 4
    new = model.encode(changed)
    assert torch.equal(new[:, :3], codes[:, :3])
    assert not torch.equal(new[:, 3:], codes[:, 3:])


def test_temporal_kernel_one_makes_each_latent_frame_see_only_its_own_frames():
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("demo", temporal_kernel_size=1).eval()
    video = random_video(9, 32, 32, b=1)
    z = model.encoder(model.preprocess(video))                         # [1, d, 5, 4, 4]
    for f in range(9):                                                  # latent frame j: frames 2j-1, 2j
        changed = video.clone()
        changed[:, f] = 255 - changed[:, f]
        zc = model.encoder(model.preprocess(changed))
        moved = [k for k in range(5) if not torch.allclose(zc[:, :, k], z[:, :, k])]
        assert moved == [(f + 1) // 2], (f, moved)
    # the decoder too: each latent frame decodes to its own frames alone
    codes = model.encode(video)
    other = codes.clone()
    other[:, 2] = (other[:, 2] + 1) % model.codebook_size              # latent frame 2 -> frames 3, 4
    a, b = model.decode(codes), model.decode(other)
    differs = [f for f in range(9) if not torch.allclose(a[:, :, f], b[:, :, f])]
    assert differs == [3, 4]


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_single_frame_conv_fast_path_matches_full_convolution(padding):
    from mmtok.video.modeling_video import CausalConv3d
    torch.manual_seed(0)
    conv = CausalConv3d(4, 6, kernel_size=(3, 3), stride=(1, 2), spatial_padding=padding)
    x = torch.randn(2, 4, 1, 8, 8)
    # the general path: repeat the frame twice in front of itself (the causal padding) and run the 3D convolution
    full = conv.conv(x.expand(-1, -1, 3, -1, -1))
    torch.testing.assert_close(conv(x), full, rtol=1e-5, atol=1e-5)


def test_circular_padding_makes_codes_shift_equivariant():
    """Content moved by whole latent cells gets the same codes moved by those cells (``spatial_padding``); with
    zero padding the codes also depend on the distance to the frame's edge."""
    torch.manual_seed(0)
    video = -torch.ones(2, 3, 5, 16, 16)
    video[:, :, :, 2:8, 3:7] = torch.rand(2, 3, 5, 6, 4) * 2 - 1        # an object on a plain background
    moved = torch.roll(video, shifts=(4, 8), dims=(3, 4))                # one and two 4 px cells down / right
    results = {}
    for padding in ("zeros", "circular"):
        torch.manual_seed(0)
        model = VideoTokenizer.from_preset("debug", spatial_padding=padding).eval()
        codes, moved_codes = model.encode(video), model.encode(moved)
        results[padding] = torch.equal(torch.roll(codes, shifts=(1, 2), dims=(2, 3)), moved_codes)
        if padding == "circular":
            torch.testing.assert_close(torch.roll(model.decode(codes), shifts=(4, 8), dims=(3, 4)),
                                       model.decode(moved_codes))
            assert torch.equal(model.encode(video[:, :, :1]), codes[:, :1])    # images share the code space
    assert results == {"zeros": False, "circular": True}


def test_fsq_frame_latent_norm_standardizes_each_latent_channel_per_frame(tmp_path):
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug", quantizer="fsq", fsq_levels=[5, 5, 5], fsq_latent_norm="frame",
                                       spatial_padding="circular").eval()
    model.save_pretrained(tmp_path)
    loaded = VideoTokenizer.from_pretrained(tmp_path).eval()
    assert (loaded.config.fsq_latent_norm, loaded.config.spatial_padding) == ("frame", "circular")
    assert torch.equal(loaded.encode(random_video(9, 16, 16)), model.encode(random_video(9, 16, 16)))
    z = model.encoder(model.preprocess(random_video(9, 16, 16)))                      # [B, 3, T', H', W']
    torch.testing.assert_close(z.mean(dim=(3, 4)), torch.zeros(z.shape[:3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(dim=(3, 4), unbiased=False), torch.ones(z.shape[:3]), atol=1e-3, rtol=0)
    plain = VideoTokenizer.from_preset("debug", quantizer="fsq", fsq_levels=[5, 5, 5])
    assert plain.config.fsq_latent_norm is None
    assert not torch.allclose(plain.encoder(plain.preprocess(random_video(9, 16, 16))).mean(dim=(3, 4)),
                              torch.zeros(z.shape[:3]), atol=1e-3)
    with pytest.raises(ValueError, match="fsq_latent_norm"):
        VideoTokenizerConfig(quantizer="fsq", fsq_levels=[5, 5], fsq_latent_norm="layer")
    with pytest.raises(ValueError, match="quantizer='fsq' only"):
        VideoTokenizerConfig(quantizer="lfq", codebook_size=64, fsq_latent_norm="frame")


def test_interface(debug_model):
    assert isinstance(debug_model, ModalityTokenizer)
    spec = code_spec(debug_model)
    assert (spec.modality, spec.codebook_size, spec.num_codebooks) == ("video", 64, 1)
    assert debug_model.frame_rate == pytest.approx(8.0 / 4)
    assert (debug_model.temporal_factor, debug_model.spatial_factor) == (4, 4)


# ---------------------------------------------------------------------------------------------------- causality
def test_encoder_is_causal(debug_model):
    video = random_video(13, 16, 16, b=1)
    codes = debug_model.encode(video)                                  # latent frames: {0}, {1-4}, {5-8}, {9-12}
    changed = video.clone()
    changed[:, 5:] = 255 - changed[:, 5:]                              # change frames 5.. (latent frames 2, 3)
    new = debug_model.encode(changed)
    assert torch.equal(new[:, :2], codes[:, :2])
    assert not torch.equal(new[:, 2:], codes[:, 2:])                   # the change is seen where it happens
    changed_first = video.clone()
    changed_first[:, 0] = 255 - changed_first[:, 0]
    assert not torch.equal(debug_model.encode(changed_first)[:, 1:], codes[:, 1:])   # later frames see the past


def test_decoder_is_causal(debug_model):
    codes = torch.randint(0, 64, (1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    frames = debug_model.decode(codes)
    changed = codes.clone()
    changed[:, 2:] = (changed[:, 2:] + 7) % 64                         # latent frames 2, 3 -> frames 5..12
    new = debug_model.decode(changed)
    assert torch.equal(new[:, :, :5], frames[:, :, :5])
    assert not torch.allclose(new[:, :, 5:], frames[:, :, 5:])


def test_first_latent_frame_equals_image_encoding(debug_model):
    video = random_video(9, 16, 16)
    codes = debug_model.encode(video)
    image_codes = debug_model.encode(video[:, :1])
    assert image_codes.shape == (2, 1, 4, 4)
    assert torch.equal(image_codes, codes[:, :1])
    # and decoding: the first decoded frame of a video equals the decoded image
    assert torch.allclose(debug_model.decode(codes)[:, :, :1], debug_model.decode(image_codes), atol=1e-5)


# ----------------------------------------------------------------------------------------------------- training
def test_forward_returns_losses_and_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug").train()
    out = model(random_video(5, 16, 16))
    assert out.reconstruction.shape == (2, 3, 5, 16, 16)
    assert out.codes.shape == (2, 2, 4, 4)
    assert out.quantizer_loss.dim() == 0 and torch.isfinite(out.quantizer_loss)
    assert {"utilization", "perplexity"} <= set(out.metrics)
    (out.reconstruction.abs().mean() + out.quantizer_loss).backward()
    assert model.encoder.conv_in.conv.weight.grad is not None
    assert model.encoder.conv_in.conv.weight.grad.abs().sum() > 0          # straight-through estimator
    assert model.decoder.conv_out.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lfq", "fsq"])
def test_debug_model_overfits_one_clip(name):
    torch.manual_seed(0)
    model = VideoTokenizer.from_preset("debug", **QUANTIZER_OVERRIDES[name]).train()
    video = moving_square()
    target = model.preprocess(video)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    start = float(psnr(model.decode(model.encode(video)), target, (-1.0, 1.0)))
    model.train()
    for _ in range(150):
        out = model(video)
        loss = (out.reconstruction - target).abs().mean() + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    end = float(psnr(model.decode(model.encode(video)), target, (-1.0, 1.0)))
    assert end > 22.0 and end > start + 12, (start, end)


# ---------------------------------------------------------------------------------------------------- save/load
def test_save_and_load_give_identical_codes(tmp_path, debug_model):
    debug_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mmtok_video" and config["preset"] == "debug"
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "quantizer.num_steps" in state
    video = random_video(9, 16, 16)
    loaded = VideoTokenizer.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(video), debug_model.encode(video))
    codes = debug_model.encode(video)
    assert torch.equal(loaded.decode(codes), debug_model.decode(codes))
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(auto, VideoTokenizer)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VideoTokenizerConfig)
    assert torch.equal(auto.encode(video), codes)


# ------------------------------------------------------------------------------------------------------- errors
def test_bad_frame_count_raises_and_pad_fixes_it(debug_model):
    video = random_video(7, 16, 16)
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):
        debug_model.encode(video)
    codes = debug_model.encode(video, pad=True)
    assert codes.shape == (2, 3, 4, 4)                                  # padded to 9 frames
    padded = torch.cat([video, video[:, -1:].expand(-1, 2, -1, -1, -1)], dim=1)
    assert torch.equal(codes, debug_model.encode(padded))


def test_bad_size_raises_and_pad_fixes_it(debug_model):
    video = random_video(5, 14, 18)
    with pytest.raises(ValueError, match="divisible by the spatial factor 4"):
        debug_model.encode(video)
    assert debug_model.encode(video, pad=True).shape == (2, 2, 4, 5)


@pytest.mark.parametrize("video,error,match", [
    (torch.zeros(2, 5, 16, 16, 4, dtype=torch.uint8), ValueError, r"\[B, T, H, W, 3\]"),
    (torch.zeros(5, 16, 16, 3, dtype=torch.uint8), ValueError, r"\[B, T, H, W, 3\]"),
    (torch.zeros(2, 5, 16, 16, 3), ValueError, "channel-last"),
    (torch.zeros(2, 1, 5, 16, 16), ValueError, r"\[B, 3, T, H, W\]"),
    (torch.zeros(2, 5, 16, 16, 3, dtype=torch.int32), TypeError, "uint8"),
    ([[0, 1]], TypeError, "torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(debug_model, video, error, match):
    with pytest.raises(error, match=match):
        debug_model.encode(video)


def test_bad_codes_raise_clear_errors(debug_model):
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        debug_model.decode(torch.full((1, 2, 4, 4), 64))
    with pytest.raises(ValueError, match=r"\[B, T', H', W'\]"):
        debug_model.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        debug_model.decode(torch.zeros(1, 2, 4, 4))


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        VideoTokenizerConfig(codebook_size=1000)
    with pytest.raises(ValueError, match="spatial_downsample"):
        VideoTokenizerConfig(channel_multipliers=[1, 2], spatial_downsample=[True, True], temporal_downsample=[True])
    with pytest.raises(ValueError, match="spatial_padding"):
        VideoTokenizerConfig(spatial_padding="reflect")


# ------------------------------------------------------------------------------------------- reconstruction loss
def _glyph_on_black() -> torch.Tensor:
    target = torch.full((2, 3, 3, 8, 8), -1.0)                    # black frames in [-1, 1]
    target[:, 0, :, 2:4, 2:4] = 1.0                                 # a small red square: 4 of 64 pixels
    return target


def test_reconstruction_loss_without_weight_is_the_plain_mean():
    torch.manual_seed(0)
    target, recon = _glyph_on_black(), torch.rand(2, 3, 3, 8, 8) * 2 - 1
    d = recon - target
    expected = 0.5 * d.abs().mean() + 2.0 * d.pow(2).mean()
    assert torch.allclose(reconstruction_loss(recon, target, l1=0.5, l2=2.0), expected)


def test_reconstruction_loss_foreground_weight_counts_errors_on_the_glyph_more():
    target = _glyph_on_black()
    glyph_missed = target.clone()
    glyph_missed[:, 0, :, 2:4, 2:4] = -1.0                          # the model drew only the background
    background_wrong = target.clone()
    background_wrong[:, 0, :, 5:7, 5:7] = 1.0                       # as many wrong pixels, on the background
    plain = [reconstruction_loss(r, target, l1=0.0, l2=1.0) for r in (glyph_missed, background_wrong)]
    weighted = [reconstruction_loss(r, target, l1=0.0, l2=1.0, foreground_weight=10.0)
                for r in (glyph_missed, background_wrong)]
    assert torch.allclose(plain[0], plain[1])
    assert weighted[0] > 3 * weighted[1]
    # normalized per frame: a perfect reconstruction costs nothing, a uniform error costs what the plain mean says
    assert reconstruction_loss(target, target, foreground_weight=10.0) == 0
    shifted = target + 0.1
    assert torch.allclose(reconstruction_loss(shifted, target, l1=0.0, l2=1.0, foreground_weight=10.0),
                          torch.tensor(0.01), atol=1e-6)


def test_reconstruction_loss_rejects_bad_input():
    target = _glyph_on_black()
    with pytest.raises(ValueError, match="reconstruction and target"):
        reconstruction_loss(target[:, :, :2], target)
    with pytest.raises(ValueError, match="foreground_weight"):
        reconstruction_loss(target, target, foreground_weight=-1.0)
