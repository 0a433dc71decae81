"""PatchEncoderModel: shapes per modality, pooling, input checks, divided == joint at T' = 1, save / load, training."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

import mmtok  # noqa: F401  (registers the encoder with AutoModel)
from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel
from mmtok.pretrained import WeightsMismatchError


def _encoder(modality="video", **overrides) -> PatchEncoderModel:
    return PatchEncoderModel(PatchEncoderConfig.from_preset("debug", modality=modality, **overrides)).eval()


def _video(b=2, t=4, side=16):
    return torch.rand(b, 3, t, side, side) * 2 - 1


def _check_pooling(out):
    seg = torch.repeat_interleave(torch.arange(len(out.num_tokens)), out.num_tokens)
    w = out.sizes[:, None]
    expected = torch.zeros_like(out.pooler_output).index_add_(0, seg, out.last_hidden_state * w)
    expected /= torch.zeros(len(out.num_tokens)).index_add_(0, seg, out.sizes)[:, None]
    torch.testing.assert_close(out.pooler_output, expected)


def test_video_shapes_packing_and_pooling():
    out = _encoder()(pixel_values=_video(2, 8, 16))                          # 4 x 4 x 4 tubelets per clip
    assert out.last_hidden_state.shape == (128, 32) and out.pooler_output.shape == (2, 32)
    assert out.num_tokens.tolist() == [64, 64] and out.cu_seqlens.tolist() == [0, 64, 128]
    assert out.sizes.eq(1).all()
    padded, mask = out.to_padded()
    assert padded.shape == (2, 64, 32) and mask.all()
    _check_pooling(out)
    assert isinstance(_encoder()(pixel_values=_video(), return_dict=False), tuple)


def test_an_image_is_a_one_tubelet_still_clip():
    model = _encoder()                                                       # tubelet_size 2
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(pixel_values=image)
    assert out.num_tokens.tolist() == [16, 16]
    still = model(pixel_values=image[:, :, None].expand(-1, -1, 2, -1, -1))
    assert torch.equal(out.last_hidden_state, still.last_hidden_state)
    assert torch.equal(model(pixel_values=image[:, :, None]).pooler_output, out.pooler_output)


@pytest.mark.parametrize("attention, rlt", [("joint", None), ("divided", None), ("joint", 0.05)])
def test_first_frame_padding_reads_odd_length_clips_as_the_clip_after_copies_of_its_first_frame(attention, rlt):
    model = _encoder(tubelet_padding="first_frame", attention=attention, rlt_threshold=rlt)   # tubelet_size 2
    clip = _video(t=5)
    clip[:, :, 2:] = clip[:, :, 1:2]                       # static after frame 1: RLT drops the last tubelet
    out = model(pixel_values=clip)
    padded = model(pixel_values=torch.cat([clip[:, :, :1], clip], dim=2))            # 6 frames: no padding needed
    torch.testing.assert_close(out.last_hidden_state, padded.last_hidden_state)
    assert out.num_tokens.tolist() == ([48, 48] if rlt is None else [32, 32])         # 3 x 4 x 4 tubelets
    with pytest.raises(ValueError, match="tubelet_padding='first_frame'"):
        _encoder(attention=attention)(pixel_values=clip)
    with pytest.raises(ValueError, match="tubelet_padding must be one of"):
        PatchEncoderConfig.from_preset("debug", modality="video", tubelet_padding="last")


def test_audio_waveform_and_log_mel_patches():
    out = _encoder("audio")(input_values=torch.randn(2, 64 * 5))
    assert out.num_tokens.tolist() == [5, 5] and out.last_hidden_state.shape == (10, 32)
    mel = _encoder("audio", audio_input="log_mel", audio_patch_size=4, mel_n_fft=128, mel_hop_length=32,
                   mel_bins=16)
    out = mel(input_values=torch.randn(2, 1, 32 * 4 * 3))                   # 3 patches of 4 mel frames
    assert out.num_tokens.tolist() == [3, 3] and torch.isfinite(out.pooler_output).all()


def test_text_removes_padding_and_packs_rows_of_different_length():
    model = _encoder("text")
    ids = torch.randint(0, 256, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    out = model(input_ids=ids, attention_mask=mask)
    assert out.num_tokens.tolist() == [4, 7, 1]
    _check_pooling(out)
    # the same rows one by one give the same tokens: nothing crosses rows, padding is never seen
    for b, n in enumerate([4, 7, 1]):
        alone = model(input_ids=ids[b:b + 1, :n])
        start = out.cu_seqlens[b].item()
        torch.testing.assert_close(out.last_hidden_state[start:start + n], alone.last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    padded = _encoder("text", pad_token_id=0)(input_ids=torch.tensor([[5, 6, 0, 0], [7, 0, 8, 9]]))
    assert padded.num_tokens.tolist() == [2, 3]


@pytest.mark.parametrize("modality, kwargs, message", [
    ("video", dict(pixel_values=torch.zeros(3, 4, 16)), r"must be \[B, 3, T, H, W\]"),
    ("video", dict(pixel_values=torch.zeros(2, 1, 4, 16, 16)), r"must be \[B, 3, T, H, W\]"),
    ("video", dict(pixel_values=torch.zeros(2, 4, 16, 16, 3)), "channel-last"),
    ("video", dict(pixel_values=torch.zeros(2, 3, 3, 16, 16)), "multiple of tubelet_size=2"),
    ("video", dict(pixel_values=torch.zeros(2, 3, 4, 16, 18)), "multiples of patch_size=4"),
    ("video", dict(pixel_values=torch.zeros(1, 3, 4, 64, 16)), "exceeds max_grid"),
    ("video", dict(pixel_values=torch.zeros(1, 4, 16, 16, 3, dtype=torch.uint8)), "from_uint8"),
    ("video", dict(pixel_values=torch.full((1, 3, 2, 8, 8), float("nan"))), "NaN"),
    ("video", dict(input_ids=torch.zeros(1, 3, dtype=torch.long)), "takes pixel_values only"),
    ("audio", dict(input_values=torch.zeros(2, 100)), "multiple of 64"),
    ("audio", dict(input_values=torch.zeros(2, 2, 128)), r"\[B, samples\]"),
    ("text", dict(input_ids=torch.tensor([[1, 256]])), r"must lie in \[0, vocab_size=256\)"),
    ("text", dict(input_ids=torch.zeros(2, 3)), "integer tensor"),
    ("text", dict(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)), "attention_mask"),
    ("text", dict(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 0], [0] * 3])),
     "hold no real token"),
])
def test_bad_inputs_name_the_expected_shape(modality, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _encoder(modality)(**kwargs)


def test_divided_equals_joint_attention_with_one_time_step():
    joint = _encoder()
    divided = _encoder(attention="divided")
    missing = divided.load_state_dict(joint.state_dict(), strict=False).missing_keys
    assert missing and all(".temporal_" in k for k in missing)              # the shared layout: only temporal parts
    image = torch.rand(2, 3, 16, 16) * 2 - 1                                # T' = 1
    a, b = joint(pixel_values=image), divided(pixel_values=image)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=1e-5, atol=1e-6)
    # longer clips differ (joint attention sees other frames), and a fresh divided model's temporal branch is zero
    assert not torch.allclose(joint(pixel_values=_video()).pooler_output, divided(pixel_values=_video()).pooler_output)
    assert divided.blocks[0].temporal_attn.proj.weight.abs().sum() == 0


@pytest.mark.parametrize("modality, overrides, inputs", [
    ("video", dict(rlt_threshold=0.05, tome_r=2, merge="vtm"), dict(pixel_values=_video())),
    ("video", dict(attention="divided", stts_frames=1), dict(pixel_values=_video())),
    ("audio", dict(audio_input="log_mel", audio_patch_size=2, mel_n_fft=128, mel_hop_length=32, mel_bins=16),
     dict(input_values=torch.randn(2, 256))),
    ("text", dict(pad_token_id=0, tome_r=1), dict(input_ids=torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]]))),
])
def test_save_pretrained_round_trip(tmp_path, modality, overrides, inputs):
    model = _encoder(modality, **overrides)
    model.save_pretrained(tmp_path)
    loaded = PatchEncoderModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(auto, PatchEncoderModel) and isinstance(AutoConfig.from_pretrained(tmp_path), PatchEncoderConfig)
    ref = model(**inputs)
    for other in (loaded, auto):
        out = other(**inputs)
        assert torch.equal(out.num_tokens, ref.num_tokens)
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=0)


def test_a_plain_checkpoint_loads_with_new_reduction_parts_and_strictly_otherwise(tmp_path):
    _encoder().save_pretrained(tmp_path)
    model = PatchEncoderModel.from_pretrained(tmp_path, rlt_threshold=0.05).eval()
    assert model.embeddings.run_length.weight.abs().sum() == 0              # training-free RLT
    stts = PatchEncoderModel.from_pretrained(tmp_path, stts_frames=1)
    assert stts(pixel_values=_video()).num_tokens.tolist() == [16, 16]
    with pytest.raises(WeightsMismatchError):
        PatchEncoderModel.from_pretrained(tmp_path, attention="divided")


@pytest.mark.parametrize("overrides", [dict(), dict(rlt_threshold=0.02, tome_r=3)])
def test_loss_goes_down_on_a_tiny_classification_task(overrides):
    # two classes of 4-frame 8x8 clips over a static noisy background: a bright square drifting right along the top
    # half of the frame, or along the bottom half
    def clip(label, step):
        video = (torch.rand(3, 1, 8, 8) * 0.4 - 0.8).repeat(1, 4, 1, 1)
        row = 4 * label + step % 3
        for t in range(4):
            video[:, t, row:row + 2, 2 * t:2 * t + 2] = 0.9
        return video

    labels = torch.tensor([0, 1] * 4)
    video = torch.stack([clip(int(y), i) for i, y in enumerate(labels)])
    model = _encoder(tubelet_size=1, patch_size=2, **overrides).train()
    head = torch.nn.Linear(32, 2)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-4)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(model(pixel_values=video).pooler_output), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


@pytest.mark.parametrize("modality, inputs, tables", [
    ("video", dict(pixel_values=_video()), ("patch", "temporal", "spatial")),
    ("audio", dict(input_values=torch.randn(2, 256)), ("patch", "position")),
    ("text", dict(input_ids=torch.randint(0, 256, (2, 5))), ("token", "position")),
])
def test_gradients_reach_the_embeddings(modality, inputs, tables):
    model = _encoder(modality).train()
    model(**inputs).pooler_output.square().sum().backward()
    for name in tables:
        assert getattr(model.embeddings, name).weight.grad.abs().sum() > 0
