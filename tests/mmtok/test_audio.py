"""Audio tokenizer: shapes per preset, bandwidth selection, errors, save/load, streaming equality, causality, the
debug model overfitting a clip, the EnCodec bridge, and the audio features/losses."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.audio import (
    PRESETS, AudioTokenizer, AudioTokenizerConfig, EncodecAudioTokenizer, load_audio_tokenizer,
)
from mmtok.audio_features import MelSpectrogram, MultiResolutionSTFTLoss, MultiScaleMelLoss, mel_filterbank
from mmtok.interface import ModalityTokenizer, code_spec
from mmtok.metrics import si_snr


def tone(n: int, sr: int = 16000, freq: float = 440.0, batch: int = 1) -> torch.Tensor:
    t = torch.arange(n) / sr
    wave = 0.4 * torch.sin(2 * math.pi * freq * t) + 0.1 * torch.sin(2 * math.pi * 2 * freq * t)
    return wave.expand(batch, 1, n).clone()


def streaming_model(**overrides) -> AudioTokenizer:
    """A debug model exercising every streamable module: patch stem, conv shortcut, LSTM."""
    torch.manual_seed(0)
    cfg = dict(patch_size=2, conv_shortcut=True, lstm_layers=1, kmeans_init=False)
    cfg.update(overrides)
    return AudioTokenizer.from_preset("debug", **cfg).eval()


# ------------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_shapes_and_interface(preset):
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset(preset).eval()
    cfg = tok.config
    assert isinstance(tok, ModalityTokenizer)
    assert code_spec(tok).num_codebooks == cfg.num_quantizers and tok.modality == "audio"
    hop = cfg.hop_length
    assert tok.frame_rate == pytest.approx(cfg.sample_rate / hop)
    n = 2 * hop + 5                                          # not a multiple of the hop: padded up
    codes = tok.encode(torch.randn(2, 1, n) * 0.1)
    assert codes.shape == (2, cfg.num_quantizers, 3) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < cfg.codebook_size
    wav = tok.decode(codes)
    assert wav.shape == (2, 1, 3 * hop) and wav.dtype == torch.float32
    assert float(wav.abs().max()) <= 1.0


def test_preset_sizes_match_the_documented_settings():
    assert AudioTokenizerConfig.from_preset("demo").frame_rate == 32.0          # 16 kHz, hop 500
    assert AudioTokenizerConfig.from_preset("soundstream_24k").hop_length == 320
    enc = AudioTokenizerConfig.from_preset("encodec_24k")
    assert enc.frame_rate == 75.0 and enc.kbps(8) == pytest.approx(6.0) and enc.kbps(32) == pytest.approx(24.0)
    n_params = sum(p.numel() for p in AudioTokenizer(enc).parameters())
    assert 13e6 < n_params < 17e6                                               # EnCodec 24 kHz: 14.9 M
    with pytest.raises(ValueError, match="unknown audio tokenizer preset"):
        AudioTokenizerConfig.from_preset("nope")


def test_encode_accepts_2d_input_and_frames_are_ceil():
    tok = streaming_model()
    hop = tok.hop_length
    wav = tone(5 * hop + 1)
    c3 = tok.encode(wav)
    c2 = tok.encode(wav[:, 0])
    assert torch.equal(c2, c3) and c3.shape[-1] == 6 == tok.code_frames(5 * hop + 1)


def test_noncausal_model_shapes():
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("debug", causal=False, lstm_layers=1).eval()
    codes = tok.encode(tone(7 * tok.hop_length))
    assert codes.shape == (1, 4, 7)
    assert tok.decode(codes).shape == (1, 1, 7 * tok.hop_length)
    with pytest.raises(ValueError, match="causal"):
        tok.stream_encoder()


# ----------------------------------------------------------------------------------------------------- bitrate
def test_bandwidth_selection():
    tok = AudioTokenizer.from_preset("encodec_24k").eval()
    assert tok.bandwidths[:2] == pytest.approx([0.75, 1.5])
    assert tok.bandwidth_to_num_quantizers(1.5) == 2
    assert tok.bandwidth_to_num_quantizers(6.0) == 8
    assert tok.bandwidth_to_num_quantizers(7.0) == 9            # the most levels that fit
    assert tok.bandwidth_to_num_quantizers(1000.0) == 32        # capped
    with pytest.raises(ValueError, match="below one RVQ level"):
        tok.bandwidth_to_num_quantizers(0.5)

    small = streaming_model()
    wav = tone(4 * small.hop_length)
    assert small.encode(wav, bandwidth=small.bandwidths[1]).shape[1] == 2
    full = small.encode(wav)
    assert torch.equal(small.encode(wav, num_quantizers=3), full[:, :3])        # levels are a prefix
    with pytest.raises(ValueError, match="not both"):
        small.encode(wav, num_quantizers=2, bandwidth=3.0)
    with pytest.raises(ValueError, match="num_quantizers"):
        small.encode(wav, num_quantizers=5)
    # Decoding any prefix of the levels works.
    for k in range(1, 5):
        assert small.decode(full[:, :k]).shape == (1, 1, wav.shape[-1])


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_clear_errors():
    tok = streaming_model()
    with pytest.raises(TypeError, match="float waveform"):
        tok.encode(torch.zeros(1, 1, 64, dtype=torch.int16))
    with pytest.raises(ValueError, match="stereo"):
        tok.encode(torch.zeros(1, 2, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tok.encode([0.0] * 64)
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        tok.decode(torch.full((1, 2, 3), 64))
    with pytest.raises(ValueError, match=r"\[B, n_q, F\]"):
        tok.decode(torch.zeros(1, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        tok.decode(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="patch_size"):
        AudioTokenizerConfig(patch_size=0)
    wav = torch.zeros(3, 1, 64)
    wav[1, 0, 5] = float("nan")
    wav[2, 0, 7] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite values in batch item\(s\) \[1, 2\]"):
        tok.encode(wav)


# ------------------------------------------------------------------------------------------------- save / load
def test_save_load_gives_identical_codes(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("debug", lstm_layers=1)
    tok.train()
    tok(torch.randn(2, 1, 2048) * 0.3)                        # k-means init + EMA moves the codebooks
    tok.eval()
    wav = tone(1000, batch=2) + 0.05 * torch.randn(2, 1, 1000)
    codes = tok.encode(wav)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    for loaded in (AutoModel.from_pretrained(tmp_path), AudioTokenizer.from_pretrained(tmp_path),
                   load_audio_tokenizer(tmp_path)):
        assert isinstance(loaded, AudioTokenizer)
        assert torch.equal(loaded.encode(wav), codes)
        assert torch.equal(loaded.decode(codes), tok.decode(codes))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_audio_tokenizer(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("chunks", [[1, 33, 100, 7, 300, 559], [64] * 16, [999, 1]])
def test_streaming_encode_equals_whole(chunks):
    tok = streaming_model()
    wav = tone(sum(chunks), batch=2) + 0.05 * torch.randn(2, 1, sum(chunks))
    whole = tok.encode(wav)
    stream = tok.stream_encoder()
    parts, i = [], 0
    for n in chunks:
        parts.append(stream.encode(wav[..., i:i + n]))
        i += n
    parts.append(stream.flush())
    assert torch.equal(torch.cat(parts, dim=-1), whole)


def test_streaming_decode_equals_whole():
    tok = streaming_model()
    wav = tone(40 * tok.hop_length, batch=2) + 0.05 * torch.randn(2, 1, 40 * tok.hop_length)
    codes = tok.encode(wav)
    whole = tok.decode(codes)
    stream = tok.stream_decoder()
    bounds = [0, 1, 2, 7, 8, 20, 39, 40]
    parts = [stream.decode(codes[..., a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    for part, (a, b) in zip(parts, zip(bounds[:-1], bounds[1:])):
        assert part.shape[-1] == (b - a) * tok.hop_length
    torch.testing.assert_close(torch.cat(parts, dim=-1), whole, atol=1e-5, rtol=1e-4)


def test_causal_encoder_and_decoder_do_not_see_the_future():
    tok = streaming_model()
    hop = tok.hop_length
    wav = tone(20 * hop)
    changed = wav.clone()
    changed[..., 12 * hop:] = torch.randn(8 * hop)
    a, b = tok.encode(wav), tok.encode(changed)
    assert torch.equal(a[..., :12], b[..., :12]) and not torch.equal(a, b)
    codes = a.clone()
    codes[..., 12:] = (codes[..., 12:] + 1) % tok.codebook_size
    da, db = tok.decode(a), tok.decode(codes)
    torch.testing.assert_close(da[..., :12 * hop], db[..., :12 * hop])
    assert not torch.allclose(da, db)


# ---------------------------------------------------------------------------------------------------- training
def test_training_pass_has_gradients_and_quantizer_dropout():
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("debug").train()
    wav = tone(1024, batch=2)
    seen = set()
    for _ in range(12):
        out = tok(wav)
        assert out.reconstruction.shape == wav.shape and out.codes.shape == (2, 4, 32)
        used = int(out.metrics["num_quantizers"])
        assert (out.codes[:, used:] == -1).all() and (out.codes[:, :used] >= 0).all()
        seen.add(used)
    assert len(seen) > 1                                      # quantizer dropout varies the number of levels
    out = tok(wav, num_quantizers=4)
    ((out.reconstruction - wav).abs().mean() + out.quantizer_loss).backward()
    assert tok.encoder.conv_in.conv.parametrizations.weight.original1.grad.abs().sum() > 0
    assert tok.decoder.conv_out.conv.parametrizations.weight.original1.grad.abs().sum() > 0


def test_debug_model_overfits_a_short_clip():
    torch.manual_seed(0)
    wav = tone(2048)
    tok = AudioTokenizer.from_preset("debug", quantize_dropout=False)
    mel = MultiScaleMelLoss(16000, scales=range(5, 10), log_weight=0.0)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    tok.eval()
    before = float(si_snr(tok.decode(tok.encode(wav)), wav))
    tok.train()
    for _ in range(200):
        out = tok(wav)
        loss = 10 * (out.reconstruction - wav).abs().mean() + mel(out.reconstruction, wav) + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    after = float(si_snr(tok.decode(tok.encode(wav)), wav))
    assert after > 10.0 and after > before + 10.0, (before, after)


# ----------------------------------------------------------------------------------------------- EnCodec bridge
def _random_encodec(stereo: bool):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    cfg = EncodecConfig(num_filters=4, hidden_size=8, upsampling_ratios=[4, 2], num_lstm_layers=1, codebook_size=32,
                        target_bandwidths=[5.0, 10.0, 20.0], sampling_rate=8000,
                        audio_channels=2 if stereo else 1, normalize=stereo, use_causal_conv=not stereo,
                        chunk_length_s=None)
    model = EncodecModel(cfg).eval()
    with torch.no_grad():                                     # HF initializes the codebooks to zeros
        for layer in model.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
    return model


def test_encodec_bridge_matches_transformers_and_round_trips(tmp_path):
    model = _random_encodec(stereo=False)
    tok = EncodecAudioTokenizer.from_pretrained(model)
    assert isinstance(tok, EncodecAudioTokenizer) and isinstance(tok, ModalityTokenizer)
    assert tok.num_codebooks == 4 and tok.frame_rate == 1000.0 and tok.sample_rate == 8000
    wav = torch.randn(2, 1, 1001) * 0.1
    codes = tok.encode(wav)
    assert codes.shape == (2, 4, 126)
    assert tok.decode(codes).shape == (2, 1, 1008)
    # The same codes and samples as transformers' own encode/decode at a bitrate.
    ref = model.encode(wav, bandwidth=10.0)
    assert torch.equal(tok.encode(wav, bandwidth=10.0), ref.audio_codes[0])
    with torch.no_grad():
        ref_wav = model.decode(ref.audio_codes, ref.audio_scales).audio_values
    torch.testing.assert_close(tok.decode(codes[:, :2]), ref_wav.clamp(-1, 1))
    # Saved and reopened from a local directory.
    tok.save_pretrained(tmp_path / "encodec")
    again = load_audio_tokenizer(tmp_path / "encodec")
    assert isinstance(again, EncodecAudioTokenizer) and torch.equal(again.encode(wav), codes)
    with pytest.raises(FileNotFoundError, match="local directory"):
        EncodecAudioTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"must lie in \[0, 32\)"):
        tok.decode(torch.full((1, 2, 3), 40))


def test_encodec_bridge_stereo_normalizing_model():
    model = _random_encodec(stereo=True)
    tok = EncodecAudioTokenizer(model)
    wav = torch.randn(2, 1, 800) * 0.05                       # mono in: duplicated to stereo
    codes, scales = tok.encode(wav, return_scales=True)
    assert codes.shape == (2, 4, 100) and scales.shape == (2, 1)
    ref = model.encode(wav.expand(-1, 2, -1), bandwidth=20.0)
    assert torch.equal(codes, ref.audio_codes[0])
    out = tok.decode(codes, scales)
    assert out.shape == (2, 2, 800)
    rms = tok.decode(codes).pow(2).mean().sqrt()              # without scales: the reference loudness
    assert float(rms) == pytest.approx(0.1, rel=0.2)


# ------------------------------------------------------------------------------------------------ features
def test_mel_features_and_losses():
    fb = mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    spec = MelSpectrogram(16000, 512, 128, 40)(tone(4000))
    assert spec.shape == (1, 40, 4000 // 128 + 1)
    # The 440 Hz tone puts its energy in a low band.
    assert int(spec.mean(-1)[0].argmax()) < 15
    x = tone(4000)
    y = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    for loss_fn in (MultiScaleMelLoss(16000), MultiResolutionSTFTLoss((256, 512))):
        assert float(loss_fn(x, x)) == pytest.approx(0.0, abs=1e-4)
        loss = loss_fn(y, x)
        assert float(loss.detach()) > 0.01
        (grad,) = torch.autograd.grad(loss, y)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_streaming_demo_preset_in_50ms_chunks():
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("demo", kmeans_init=False).eval()
    wav = tone(18000, freq=512.0) + 0.02 * torch.randn(1, 1, 18000)   # a Moving-Digits-length clip
    codes = tok.encode(wav, num_quantizers=4)
    enc = tok.stream_encoder(num_quantizers=4)
    parts = [enc.encode(wav[..., i:i + 800]) for i in range(0, 18000, 800)] + [enc.flush()]
    assert torch.equal(torch.cat(parts, dim=-1), codes) and codes.shape == (1, 4, 36)
    dec = tok.stream_decoder()
    out = torch.cat([dec.decode(codes[..., i:i + 5]) for i in range(0, 36, 5)], dim=-1)
    torch.testing.assert_close(out, tok.decode(codes), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel,stride,dilation", [(7, 1, 1), (3, 1, 9), (4, 2, 1), (10, 5, 1), (1, 1, 1),
                                                    (2, 1, 1), (5, 1, 2)])
def test_conv_pads_inside_the_kernel_like_an_explicit_pad(causal, kernel, stride, dilation):
    import torch.nn.functional as F

    from mmtok.audio.modeling_audio import StreamConv1d

    torch.manual_seed(0)
    conv = StreamConv1d(6, 5, kernel, stride=stride, dilation=dilation, causal=causal)
    x = torch.randn(2, 6, 80)
    p = conv.padding_total
    expected = conv.conv(F.pad(x, (p, 0) if causal else (p - p // 2, p // 2)))
    out = conv(x)
    assert out.shape == expected.shape == (2, 5, 80 // stride)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_encode_and_decode_leave_their_inputs_untouched():
    """Inference overwrites activations in place; never the caller's waveform or codes."""
    torch.manual_seed(0)
    for overrides in (dict(), dict(patch_size=2), dict(conv_shortcut=True, lstm_layers=1)):
        tok = AudioTokenizer.from_preset("debug", kmeans_init=False, **overrides).eval()
        wav = tone(tok.hop_length * 8, batch=2)
        kept = wav.clone()
        codes = tok.encode(wav)
        assert torch.equal(wav, kept)
        kept_codes = codes.clone()
        tok.decode(codes)
        assert torch.equal(codes, kept_codes)


# ------------------------------------------------------------------------------------------------ spectral layout
def spectral_model(**overrides) -> AudioTokenizer:
    """A debug-size spectral codec: hop 32, n_fft 128, one ConvNeXt block of width 16 a side."""
    torch.manual_seed(0)
    cfg = dict(sample_rate=16000, architecture="spectral", ratios=(32,), n_fft=128, base_channels=16, num_blocks=1,
               dimension=16, causal=False, num_quantizers=4, codebook_size=64)
    cfg.update(overrides)
    return AudioTokenizer(AudioTokenizerConfig(**cfg))


@pytest.mark.parametrize("n_fft,hop", [(128, 32), (64, 32), (1280, 320), (96, 32)])
def test_stft_and_inverse_stft_round_trip_on_whole_frames(n_fft, hop):
    from mmtok.audio.spectral import inverse_stft, stft

    torch.manual_seed(0)
    window = torch.hann_window(n_fft)
    x = torch.randn(2, 1, 9 * hop)
    spec = stft(x, n_fft, hop, window)
    assert spec.shape == (2, n_fft // 2 + 1, 9) and spec.is_complex()
    torch.testing.assert_close(inverse_stft(spec, n_fft, hop, window), x, atol=1e-5, rtol=1e-5)
    # Frame t is centred on its own hop: a click in hop 4 shows in frames 3..5 and nowhere else here.
    click = torch.zeros(1, 1, 9 * hop)
    click[..., 4 * hop + hop // 2] = 1.0
    energy = stft(click, n_fft, hop, window).abs().sum(1)[0]
    assert energy[4] == energy.max() and energy[0] == 0 and energy[8] == 0


def test_spectral_codec_shapes_save_load_and_no_streaming(tmp_path):
    tok = spectral_model()
    tok.train()
    tok(torch.randn(2, 1, 2048) * 0.3)                        # k-means init
    tok.eval()
    wav = tone(1000, batch=2)
    codes = tok.encode(wav)
    assert codes.shape == (2, 4, math.ceil(1000 / 32)) and tok.frame_rate == 500
    out = tok.decode(codes)
    assert out.shape == (2, 1, 32 * 32) and float(out.abs().max()) <= 1.0
    tok.save_pretrained(tmp_path)
    loaded = load_audio_tokenizer(tmp_path)
    assert loaded.config.architecture == "spectral"
    assert torch.equal(loaded.encode(wav), codes) and torch.equal(loaded.decode(codes), out)
    with pytest.raises(ValueError, match="causal"):
        tok.stream_encoder()
    with pytest.raises(ValueError, match="causal"):
        tok.stream_decoder()


def test_spectral_config_errors():
    base = dict(architecture="spectral", ratios=(32,), n_fft=128, causal=False)
    with pytest.raises(ValueError, match="architecture must be"):
        AudioTokenizerConfig(architecture="wavenet")
    with pytest.raises(ValueError, match="not causal"):
        AudioTokenizerConfig(**{**base, "causal": True})
    with pytest.raises(ValueError, match=r"ratios=\[hop\]"):
        AudioTokenizerConfig(**{**base, "ratios": (4, 8)})
    with pytest.raises(ValueError, match="n_fft"):
        AudioTokenizerConfig(**{**base, "n_fft": 16})
    with pytest.raises(ValueError, match="n_fft"):
        AudioTokenizerConfig(**{**base, "n_fft": 127})
    assert AudioTokenizerConfig(**{**base, "n_fft": None}).n_fft == 128      # default: 4 hops


def test_spectral_codec_gradients_and_fitting_a_tone():
    torch.manual_seed(0)
    wav = tone(2048)
    tok = spectral_model(quantize_dropout=False)
    mel = MultiScaleMelLoss(16000, scales=range(5, 10))
    out = tok(wav)
    mel(out.reconstruction, wav).backward()
    for module in (tok.encoder.embed, tok.encoder.blocks[0].up, tok.decoder.head):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    tok.eval()
    before = float(mel(tok.decode(tok.encode(wav)), wav))
    tok.train()
    for _ in range(150):
        out = tok(wav)
        loss = mel(out.reconstruction, wav) + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    after = float(mel(tok.decode(tok.encode(wav)), wav))
    assert after < 0.5 * before, (before, after)
