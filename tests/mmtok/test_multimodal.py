"""MultimodalTokenizer bundle: encode/decode through fake tokenizers, save -> load identity, mismatch errors.

The real video and audio tokenizers are tested in their own files; here small fakes implement the interface: the
video fake is a transformers PreTrainedModel (the real ones are), the audio fake a plain class with its own
save_pretrained/from_pretrained, so both kinds of bundled part are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from mmtok.interface import ModalityTokenizer
from mmtok.multimodal import BUNDLE_FILE, MultimodalTokenizer, register_tokenizer_class
from mmtok.text import TextTokenizer
from mmtok.vocab import UnifiedVocabulary, VocabularyMismatchError


# ------------------------------------------------------------------------------------------------------- fakes
class FakeVideoConfig(PretrainedConfig):
    model_type = "mmtok_fake_video"

    def __init__(self, levels: int = 16, space: int = 2, time: int = 2, **kwargs):
        self.levels, self.space, self.time = levels, space, time
        super().__init__(**kwargs)


@register_tokenizer_class
class FakeVideoTokenizer(PreTrainedModel):
    """Causal-ish 'tokenizer': latent frame 0 = frame 0, then every ``time``-th frame; a code is the mean grey level
    of a ``space x space`` block quantized to ``levels`` steps. Decoding paints the blocks back."""

    config_class = FakeVideoConfig
    base_model_prefix = "fake"
    modality = "video"

    def __init__(self, config: FakeVideoConfig):
        super().__init__(config)
        self.gain = nn.Parameter(torch.ones(1))  # a weight, so save/load moves a tensor
        self.post_init()

    def _init_weights(self, module):
        pass

    @property
    def codebook_size(self) -> int:
        return self.config.levels

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def frame_rate(self) -> float:
        return 8.0 / self.config.time

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # uint8 [B, T, H, W, 3] -> [B, T', H', W']
        x = video.float().mean(-1) / 255.0  # [B, T, H, W]
        x = x[:, :: self.config.time]
        s = self.config.space
        x = nn.functional.avg_pool2d(x, s)  # [B, T', H/s, W/s]
        return (x * (self.config.levels - 1)).round().long().clamp(0, self.config.levels - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # [B, T', H', W'] -> float [B, 3, T, H, W] in [-1, 1]
        s, t = self.config.space, self.config.time
        x = codes.float() / (self.config.levels - 1) * 2 - 1
        x = x.repeat_interleave(s, -1).repeat_interleave(s, -2).repeat_interleave(t, 1)
        return (x * self.gain).unsqueeze(1).expand(-1, 3, -1, -1, -1)


@register_tokenizer_class
class FakeAudioTokenizer:
    """Plain class: ``n_q`` levels, each a coarser quantization of the mean of ``hop`` samples."""

    modality = "audio"

    def __init__(self, n_q: int = 3, codebook: int = 8, hop: int = 4):
        self.n_q, self.codebook, self.hop = n_q, codebook, hop

    codebook_size = property(lambda self: self.codebook)
    num_codebooks = property(lambda self: self.n_q)
    frame_rate = property(lambda self: 16000 / self.hop)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # [B, 1, N] -> [B, n_q, N // hop]
        frames = wav[..., : wav.shape[-1] // self.hop * self.hop].reshape(wav.shape[0], -1, self.hop).mean(-1)
        base = ((frames.clamp(-1, 1) + 1) / 2 * (self.codebook - 1)).round().long()
        return torch.stack([(base + lvl) % self.codebook for lvl in range(self.n_q)], dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # [B, L, F] -> [B, 1, F * hop]
        x = codes[:, 0].float() / (self.codebook - 1) * 2 - 1
        return x.repeat_interleave(self.hop, -1).unsqueeze(1)

    def save_pretrained(self, d):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "fake_audio.json").write_text(json.dumps({"n_q": self.n_q, "codebook": self.codebook,
                                                             "hop": self.hop}))

    @classmethod
    def from_pretrained(cls, d):
        return cls(**json.loads((Path(d) / "fake_audio.json").read_text()))


@register_tokenizer_class
class NoSaveTokenizer(FakeAudioTokenizer):
    save_pretrained = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    words = "a the red green blue seven three digit drifts up down left right".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) for i in range(200)]
    return TextTokenizer.train(texts, vocab_size=60)


@pytest.fixture()
def bundle(text_tok) -> MultimodalTokenizer:
    return MultimodalTokenizer(text=text_tok, video=FakeVideoTokenizer(FakeVideoConfig()),
                               audio=FakeAudioTokenizer(), num_audio_levels=2)


def clip(seed=0, t=5, h=8, w=8) -> torch.Tensor:
    return torch.randint(0, 256, (t, h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def wave(n=64) -> torch.Tensor:
    return torch.linspace(-1, 1, n).unsqueeze(0)


# ------------------------------------------------------------------------------------------------------- tests
def test_fakes_implement_the_interface():
    assert isinstance(FakeVideoTokenizer(FakeVideoConfig()), ModalityTokenizer)
    assert isinstance(FakeAudioTokenizer(), ModalityTokenizer)


def test_vocab_is_laid_out_from_the_tokenizers(bundle, text_tok):
    v = bundle.vocab
    assert len(v.range_of("text")) == text_tok.codebook_size
    assert len(v.range_of("video")) == 16 and v.num_audio_levels == 2 and len(v.range_of("audio")) == 16
    assert bundle.num_audio_levels == 2


def test_encode_example_and_decode(bundle):
    video, audio = clip(), wave()
    ex = bundle.encode_example("t2v", text="a red seven drifts up", video=video)
    assert bundle.latent_hw == (4, 4)
    out = bundle.decode(ex.input_ids)
    assert out.text == "a red seven drifts up"
    assert out.video.shape == (3, 6, 8, 8) and out.audio is None
    codes = bundle.video.encode(video.unsqueeze(0))[0]
    assert torch.equal(out.parsed.video, codes)
    assert torch.allclose(out.video, bundle.video.decode(codes.unsqueeze(0))[0])

    ex = bundle.encode_example("avcont", video=video, audio=audio, cond_frames=1)
    out = bundle.decode(ex.input_ids)
    assert out.video.shape[1] == 6 and out.audio.shape == (1, 64) and out.text is None
    audio_codes = bundle.audio.encode(audio.reshape(1, 1, -1))[0, :2]
    assert torch.equal(out.parsed.audio, audio_codes)
    assert ex.loss_mask.sum() > 0 and ex.prefix_len < len(ex)

    media = bundle.encode_media(text="a red seven", video=video, audio=audio)
    assert set(media) == {"text", "video", "audio"} and media["audio"].shape == (3, 16)
    built = bundle.build("v2a", video=media["video"], audio=media["audio"])
    assert torch.equal(built.input_ids, bundle.encode_example("v2a", video=video, audio=audio).input_ids)
    prompt = bundle.build_prompt("v2a", video=media["video"])
    assert torch.equal(prompt, built.input_ids[: built.prefix_len])


def test_decode_repairs_a_truncated_generation(bundle):
    ex = bundle.encode_example("t2v", text="a red seven", video=clip())
    out = bundle.decode(ex.input_ids[:-5], video_frames=3, repair=True)
    assert out.video.shape == (3, 6, 8, 8) and out.parsed.repairs


def test_save_load_identity(tmp_path, bundle):
    ex = bundle.encode_example("v2a", video=clip(1), audio=wave())
    bundle.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # an LM exported alongside must not disturb the bundle
    loaded = MultimodalTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab == bundle.vocab and loaded.vocab.fingerprint == bundle.vocab.fingerprint
    assert isinstance(loaded.video, FakeVideoTokenizer) and isinstance(loaded.audio, FakeAudioTokenizer)
    assert loaded.text == bundle.text
    for k, v in bundle.video.state_dict().items():
        assert torch.equal(loaded.video.state_dict()[k], v)
    assert (loaded.latent_hw, loaded.num_audio_levels, loaded.audio_pattern) == ((4, 4), 2, "frame_major")
    again = loaded.encode_example("v2a", video=clip(1), audio=wave())
    assert torch.equal(again.input_ids, ex.input_ids)
    assert torch.equal(loaded.decode(ex.input_ids).audio, bundle.decode(ex.input_ids).audio)
    manifest = json.loads((tmp_path / BUNDLE_FILE).read_text())
    assert manifest["parts"]["video"]["class"].endswith("FakeVideoTokenizer")


def test_bundle_without_some_modalities(tmp_path, text_tok):
    only_text = MultimodalTokenizer(text=text_tok)
    assert only_text.vocab.modalities == ("text",)
    only_text.save_pretrained(tmp_path)
    loaded = MultimodalTokenizer.from_pretrained(tmp_path)
    assert loaded.video is None and loaded.vocab == only_text.vocab
    with pytest.raises(ValueError, match="no video tokenizer"):
        loaded.encode_media(video=clip())


def test_load_refuses_a_vocabulary_of_another_layout(tmp_path, bundle, text_tok):
    bundle.save_pretrained(tmp_path)
    wrong = UnifiedVocabulary(text=text_tok, video=FakeVideoTokenizer(FakeVideoConfig(levels=32)),
                              audio=FakeAudioTokenizer(), num_audio_levels=2)
    wrong.to_json(tmp_path / "vocab.json")
    manifest = json.loads((tmp_path / BUNDLE_FILE).read_text())
    with pytest.raises(VocabularyMismatchError) as err:
        MultimodalTokenizer.from_pretrained(tmp_path)
    assert manifest["vocab_layout"] in str(err.value) and wrong.describe() in str(err.value)
    manifest["vocab_fingerprint"] = wrong.fingerprint
    (tmp_path / BUNDLE_FILE).write_text(json.dumps(manifest))
    with pytest.raises(VocabularyMismatchError) as err:  # now the tokenizers disagree with the vocabulary
        MultimodalTokenizer.from_pretrained(tmp_path)
    assert "codebook_size 32 in the vocabulary, 16 in the tokenizer" in str(err.value)
    assert wrong.describe() in str(err.value) and bundle.vocab.describe() in str(err.value)
    with pytest.raises(VocabularyMismatchError, match="fingerprint"):
        bundle.check_fingerprint(wrong.fingerprint, layout=wrong.describe())
    with pytest.raises(VocabularyMismatchError):
        MultimodalTokenizer(text=text_tok, video=FakeVideoTokenizer(FakeVideoConfig()),
                            audio=FakeAudioTokenizer(), vocab=wrong)


def test_bundle_errors(tmp_path, bundle, text_tok):
    with pytest.raises(FileNotFoundError, match="not found"):
        MultimodalTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=BUNDLE_FILE):
        MultimodalTokenizer.from_pretrained(tmp_path)
    bundle.save_pretrained(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / BUNDLE_FILE).read_text())
    manifest["parts"]["audio"]["class"] = "mmtok.nowhere.Tokenizer"
    (tmp_path / "b" / BUNDLE_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"parts\.audio\.class names 'mmtok.nowhere.Tokenizer'"):
        MultimodalTokenizer.from_pretrained(tmp_path / "b")
    manifest["parts"]["audio"]["subfolder"] = "../../elsewhere"
    (tmp_path / "b" / BUNDLE_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"parts\.audio\.subfolder"):
        MultimodalTokenizer.from_pretrained(tmp_path / "b")
    no_save = MultimodalTokenizer(text=text_tok, audio=NoSaveTokenizer())
    with pytest.raises(TypeError, match="NoSaveTokenizer"):
        no_save.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="one clip"):
        bundle.encode_media(video=clip().unsqueeze(0))
    with pytest.raises(ValueError, match="mono float"):
        bundle.encode_media(audio=torch.zeros(2, 64))
    with pytest.raises(TypeError, match="modality-tokenizer interface"):
        MultimodalTokenizer(video=object())
    with pytest.raises(ValueError, match="modality 'audio'"):
        MultimodalTokenizer(video=FakeAudioTokenizer())


def test_bundle_with_the_real_debug_tokenizers(tmp_path, text_tok):
    from mmtok.audio import AudioTokenizer
    from mmtok.video import VideoTokenizer

    torch.manual_seed(0)
    bundle = MultimodalTokenizer(text=text_tok, video=VideoTokenizer.from_preset("debug").eval(),
                                 audio=AudioTokenizer.from_preset("debug").eval(), num_audio_levels=2)
    video = clip(t=5, h=16, w=16)
    audio = 0.1 * torch.sin(torch.arange(1600) / 7.0).unsqueeze(0)
    ex = bundle.encode_example("avcont", text="a red seven", video=video, audio=audio, text_condition=True)
    out = bundle.decode(ex.input_ids)
    assert out.text == "a red seven"
    assert out.video.shape == (3, 5, 16, 16) and out.audio.shape == (1, 1600)
    bundle.save_pretrained(tmp_path)
    loaded = MultimodalTokenizer.from_pretrained(tmp_path)
    assert type(loaded.video).__name__ == "VideoTokenizer" and type(loaded.audio).__name__ == "AudioTokenizer"
    assert loaded.vocab == bundle.vocab
    again = loaded.encode_example("avcont", text="a red seven", video=video, audio=audio, text_condition=True)
    assert torch.equal(again.input_ids, ex.input_ids)
    assert torch.allclose(loaded.decode(ex.input_ids).video, out.video, atol=1e-5)


def test_a_bundle_never_imports_the_class_it_names(tmp_path, bundle, monkeypatch):
    """A hostile manifest naming a module that would run code on import is refused and the module never runs."""
    evil = tmp_path / "evil_tokenizer_module.py"
    witness = tmp_path / "ran"
    evil.write_text(f"open({str(witness)!r}, 'w').write('x')\nclass Tokenizer:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bundle.save_pretrained(tmp_path / "b")
    path = tmp_path / "b" / BUNDLE_FILE
    for hostile in ("evil_tokenizer_module.Tokenizer", "os.system", "subprocess.Popen"):
        manifest = json.loads(path.read_text())
        manifest["parts"]["video"]["class"] = hostile
        path.write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=r"parts\.video\.class") as err:
            MultimodalTokenizer.from_pretrained(tmp_path / "b")
        assert hostile in str(err.value) and "register_tokenizer_class" in str(err.value)
    assert not witness.exists()


def test_unregistered_classes_are_refused_at_save(tmp_path, text_tok):
    class Unregistered(FakeAudioTokenizer):
        pass

    with pytest.raises(TypeError, match="not registered"):
        MultimodalTokenizer(text=text_tok, audio=Unregistered()).save_pretrained(tmp_path)
    assert not (tmp_path / BUNDLE_FILE).exists()


def test_mmtok_models_resolve_through_the_registry(tmp_path, text_tok):
    from mmtok.multimodal import resolve_tokenizer_class
    from mmtok.video import VideoTokenizer

    assert resolve_tokenizer_class("mmtok.video.modeling_video.VideoTokenizer", tmp_path, "f") is VideoTokenizer
    assert resolve_tokenizer_class("mmtok.text.TextTokenizer", tmp_path, "f") is TextTokenizer


def test_models_registered_with_automodel_resolve_by_their_config(tmp_path):
    """A model class registered with transformers' AutoModel resolves through its folder's config.json model_type
    (and only when the manifest names that very class)."""
    from transformers import AutoConfig, AutoModel

    from mmtok.multimodal import class_name, resolve_tokenizer_class

    class AutoOnlyConfig(PretrainedConfig):
        model_type = "mmtok_test_auto_only"

    class AutoOnlyTokenizer(PreTrainedModel):
        config_class = AutoOnlyConfig

    AutoConfig.register(AutoOnlyConfig.model_type, AutoOnlyConfig, exist_ok=True)
    AutoModel.register(AutoOnlyConfig, AutoOnlyTokenizer, exist_ok=True)
    AutoOnlyConfig().save_pretrained(tmp_path)
    assert resolve_tokenizer_class(class_name(AutoOnlyTokenizer), tmp_path, "f") is AutoOnlyTokenizer
    with pytest.raises(ValueError, match="not a registered tokenizer class"):
        resolve_tokenizer_class("os.system", tmp_path, "f")


def test_require_finite_names_bad_items_even_when_the_sum_overflows():
    from mmtok.interface import require_finite

    require_finite(torch.full((2, 4), 3e38), "big")              # finite values whose sum overflows: accepted
    require_finite(torch.zeros(0, 3), "empty")
    x = torch.full((3, 4), 3e38)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"big holds NaN or infinite values in batch item\(s\) \[2\]"):
        require_finite(x, "big")
    y = torch.zeros(2, 5)
    y[0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"\[0\]"):
        require_finite(y, "small")
