"""UnifiedVocabulary: layout, id mapping, serialization and mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.interface import CodeSpec
from mmtok.vocab import BASE_SPECIAL_TOKENS, TASK_TOKENS, UnifiedVocabulary, VocabularyMismatchError


def make_vocab(text=100, video=256, audio=(32, 8), levels=4, **kw) -> UnifiedVocabulary:
    return UnifiedVocabulary(
        text=None if text is None else CodeSpec("text", text),
        video=None if video is None else CodeSpec("video", video),
        audio=None if audio is None else CodeSpec("audio", audio[0], audio[1]),
        num_audio_levels=levels if audio is not None else None, **kw)


@st.composite
def vocab_configs(draw):
    text = draw(st.one_of(st.none(), st.integers(1, 3000)))
    video = draw(st.one_of(st.none(), st.integers(1, 2**12)))
    audio = draw(st.one_of(st.none(), st.tuples(st.integers(1, 1024), st.integers(1, 8))))
    levels = None if audio is None else draw(st.integers(1, audio[1]))
    slots = draw(st.integers(len(BASE_SPECIAL_TOKENS), 128))
    return dict(text=text, video=video, audio=audio, levels=levels, num_special_slots=slots)


@settings(max_examples=60, deadline=None)
@given(vocab_configs())
def test_ranges_are_disjoint_contiguous_and_cover_the_vocabulary(cfg):
    vocab = make_vocab(**cfg)
    ranges = list(vocab.ranges().items())
    assert ranges[0] == ("special", range(0, cfg["num_special_slots"]))
    for (_, a), (_, b) in zip(ranges, ranges[1:]):
        assert a.stop == b.start  # contiguous, in order, hence disjoint
    assert ranges[-1][1].stop == vocab.size
    assert [name for name, _ in ranges[1:]] == [m for m in ("text", "video", "audio") if cfg[m] is not None]
    if cfg["audio"] is not None:
        cb, _ = cfg["audio"]
        levels = [vocab.range_of("audio", level=lv) for lv in range(cfg["levels"])]
        assert levels[0].start == vocab.range_of("audio").start and levels[-1].stop == vocab.range_of("audio").stop
        assert all(len(r) == cb for r in levels)
        assert all(a.stop == b.start for a, b in zip(levels, levels[1:]))
        assert vocab.audio_level_of(levels[-1].stop - 1) == cfg["levels"] - 1
    for name, r in ranges:  # modality_of agrees with the ranges at both ends
        assert vocab.modality_of(r.start) == name and vocab.modality_of(r.stop - 1) == name
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.modality_of(vocab.size)


def test_special_tokens_have_fixed_ids_and_extra_tokens_do_not_shift_ranges():
    vocab = make_vocab()
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    for tok in BASE_SPECIAL_TOKENS:
        assert vocab.modality_of(vocab.token_id(tok)) == "special"
        assert vocab.token_name(vocab.token_id(tok)) == tok
    assert len({vocab.token_id(t) for t in BASE_SPECIAL_TOKENS}) == len(BASE_SPECIAL_TOKENS)
    assert all(t in BASE_SPECIAL_TOKENS for t in TASK_TOKENS)
    extended = make_vocab(extra_special_tokens=("<sep>", "<mask>"))
    assert extended.ranges()["text"] == vocab.ranges()["text"]
    assert extended.size == vocab.size
    assert extended.token_id("<sep>") == len(BASE_SPECIAL_TOKENS)
    assert extended.token_id("<mask>") == vocab.token_id("<reserved_1>")
    assert extended.fingerprint != vocab.fingerprint  # a token's meaning changed
    with pytest.raises(KeyError, match="unknown special token"):
        vocab.token_id("<nope>")
    with pytest.raises(ValueError, match="already defined"):
        make_vocab(extra_special_tokens=("<bos>",))
    with pytest.raises(ValueError, match="cannot hold"):
        make_vocab(num_special_slots=4)


@settings(max_examples=60, deadline=None)
@given(vocab_configs(), st.data())
def test_local_global_local_round_trip(cfg, data):
    vocab = make_vocab(**cfg)
    for modality in ("text", "video"):
        if cfg[modality] is None:
            continue
        codes = data.draw(st.lists(st.integers(0, cfg[modality] - 1), min_size=1, max_size=20))
        g = vocab.to_global(modality, codes)
        assert all(i in vocab.range_of(modality) for i in g)
        assert vocab.to_local(modality, g) == codes
        t = torch.tensor(codes)
        assert torch.equal(vocab.to_local(modality, vocab.to_global(modality, t)), t)
        assert vocab.to_local(modality, vocab.to_global(modality, codes[0])) == codes[0]
    if cfg["audio"] is not None:
        cb, _ = cfg["audio"]
        n_levels = data.draw(st.integers(1, cfg["levels"]))
        frames = data.draw(st.integers(1, 6))
        codes = torch.randint(0, cb, (n_levels, frames))
        g = vocab.to_global("audio", codes)  # row l -> level l
        for lv in range(n_levels):
            r = vocab.range_of("audio", level=lv)
            assert bool(((g[lv] >= r.start) & (g[lv] < r.stop)).all())
            assert torch.equal(vocab.to_local("audio", g[lv], level=lv), codes[lv])
        assert torch.equal(vocab.to_local("audio", g), codes)


def test_to_global_keeps_the_input_type_and_image_is_video():
    vocab = make_vocab()
    assert vocab.to_global("text", 3) == 64 + 3
    assert vocab.to_global("text", [0, 1]) == [64, 65]
    assert vocab.to_global("image", 0) == vocab.to_global("video", 0) == 164
    arr = vocab.to_global("video", np.array([1, 2], dtype=np.int16))
    assert isinstance(arr, np.ndarray) and arr.tolist() == [165, 166]
    t = vocab.to_global("video", torch.tensor([[1, 2]], dtype=torch.int32))
    assert t.dtype == torch.long and t.tolist() == [[165, 166]]


def test_mapping_errors_name_the_problem():
    vocab = make_vocab()
    with pytest.raises(ValueError, match=r"local video codes outside \[0, 256\).*300"):
        vocab.to_global("video", [1, 300])
    with pytest.raises(ValueError, match="local text codes outside"):
        vocab.to_global("text", torch.tensor([-1]))
    with pytest.raises(ValueError, match="text ids outside"):
        vocab.to_local("text", [vocab.range_of("video").start])
    with pytest.raises(ValueError, match="level-1 ids outside"):
        vocab.to_local("audio", [vocab.range_of("audio", level=0).start], level=1)
    with pytest.raises(ValueError, match="audio level 4 out of range"):
        vocab.to_global("audio", [0], level=4)
    with pytest.raises(ValueError, match="levels, frames"):
        vocab.to_global("audio", [1, 2])
    with pytest.raises(ValueError, match="keeps 4"):
        vocab.to_global("audio", torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        vocab.to_global("video", torch.zeros(3))
    with pytest.raises(ValueError, match="no audio range"):
        make_vocab(audio=None).to_global("audio", [0], level=0)
    with pytest.raises(ValueError, match="unknown modality"):
        vocab.range_of("smell")
    with pytest.raises(ValueError, match="num_audio_levels must be in"):
        make_vocab(levels=9)
    with pytest.raises(ValueError, match="modality"):
        UnifiedVocabulary(text=CodeSpec("video", 10))


def test_token_name_is_readable():
    vocab = make_vocab()
    assert vocab.token_name(64) == "text:0"
    assert vocab.token_name(vocab.range_of("audio", level=2).start + 5) == "audio[2]:5"
    assert vocab.token_name(len(BASE_SPECIAL_TOKENS)) == "<reserved_0>"


def test_json_round_trip_and_fingerprint(tmp_path):
    vocab = make_vocab(extra_special_tokens=("<sep>",))
    again = UnifiedVocabulary.from_json(vocab.to_json())
    assert again == vocab and again.fingerprint == vocab.fingerprint and again.ranges() == vocab.ranges()
    path = tmp_path / "vocab.json"
    vocab.to_json(path)
    assert UnifiedVocabulary.from_json(path) == vocab
    assert UnifiedVocabulary.from_json(str(path)).describe() == vocab.describe()
    assert make_vocab().fingerprint == make_vocab().fingerprint
    assert make_vocab(video=512).fingerprint != make_vocab().fingerprint
    assert make_vocab(levels=3).fingerprint != make_vocab().fingerprint


def test_from_json_rejects_a_layout_its_specs_do_not_give(tmp_path):
    data = make_vocab().to_dict()
    data["specs"]["video"]["codebook_size"] = 512  # file edited by hand: ranges no longer match
    with pytest.raises(VocabularyMismatchError, match="stored vocabulary layout disagrees"):
        UnifiedVocabulary.from_json(json.dumps(data))
    with pytest.raises(FileNotFoundError):
        UnifiedVocabulary.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="malformed"):
        UnifiedVocabulary.from_json("{not json")
    with pytest.raises(ValueError, match="format_version"):
        UnifiedVocabulary.from_dict({**make_vocab().to_dict(), "format_version": 99})


def test_mismatched_tokenizers_and_models_name_both_layouts():
    vocab = make_vocab()
    vocab.check_tokenizers(text=CodeSpec("text", 100), video=CodeSpec("video", 256),
                           audio=CodeSpec("audio", 32, 8))
    other = make_vocab(video=1024)
    with pytest.raises(VocabularyMismatchError) as err:
        vocab.check_tokenizers(text=CodeSpec("text", 100), video=CodeSpec("video", 1024),
                               audio=CodeSpec("audio", 32, 8))
    msg = str(err.value)
    assert "codebook_size 256 in the vocabulary, 1024" in msg
    assert vocab.describe() in msg and other.describe() in msg
    with pytest.raises(VocabularyMismatchError, match="no audio tokenizer"):
        vocab.check_tokenizers(text=CodeSpec("text", 100), video=CodeSpec("video", 256))
    with pytest.raises(VocabularyMismatchError) as err:
        vocab.check_fingerprint(other.fingerprint, layout=other.describe(), what="LM config")
    assert other.describe() in str(err.value) and vocab.describe() in str(err.value)
    assert "LM config" in str(err.value)
    vocab.check_fingerprint(vocab.fingerprint)  # no error


# ------------------------------------------------------------------------------------------------- run tokens
def test_without_run_tokens_the_layout_and_fingerprint_are_those_of_before():
    # pinned from the layout before run tokens existed: existing bundles and checkpoints must keep it
    vocab = UnifiedVocabulary(text=CodeSpec("text", 50), video=CodeSpec("video", 64),
                              audio=CodeSpec("audio", 16, 6), num_audio_levels=4)
    assert vocab.fingerprint == "d2a613d6d689aa47"
    assert "video_run" not in vocab.ranges() and vocab.max_video_run == 0 and not vocab.has("video_run")
    data = vocab.to_dict()
    assert "max_video_run" not in data and "video_run" not in data["layout"]
    assert UnifiedVocabulary(text=CodeSpec("text", 50), video=CodeSpec("video", 64), audio=CodeSpec("audio", 16, 6),
                             num_audio_levels=4, max_video_run=0) == vocab


def test_run_tokens_are_appended_after_every_range_and_round_trip(tmp_path):
    plain = make_vocab()
    runs = plain.with_video_runs(16)
    assert runs.max_video_run == 16 and runs.has("video_run") and runs.size == plain.size + 16
    for name, r in plain.ranges().items():               # every other id keeps its meaning
        assert runs.range_of(name) == r
    assert runs.range_of("video_run") == range(plain.size, plain.size + 16)
    assert runs.fingerprint != plain.fingerprint and runs.without_video_runs() == plain
    assert "video_run 1..16" in runs.describe()
    assert runs.run_token_id(1) == plain.size and runs.run_token_id([3, 16]) == [plain.size + 2, plain.size + 15]
    assert runs.run_length_of(plain.size + 15) == 16
    assert torch.equal(runs.run_length_of(runs.run_token_id(torch.arange(1, 17))), torch.arange(1, 17))
    assert runs.token_name(plain.size + 2) == "<run_3>" and runs.modality_of(plain.size) == "video_run"
    path = tmp_path / "vocab.json"
    runs.to_json(path)
    again = UnifiedVocabulary.from_json(path)
    assert again == runs and again.fingerprint == runs.fingerprint and again.max_video_run == 16


def test_run_token_errors_name_the_problem():
    plain, runs = make_vocab(), make_vocab(max_video_run=4)
    with pytest.raises(ValueError, match="no run tokens"):
        plain.run_token_id(1)
    with pytest.raises(ValueError, match="run lengths"):
        runs.run_token_id(5)
    with pytest.raises(ValueError, match="run lengths"):
        runs.run_token_id(0)
    with pytest.raises(ValueError, match="run token ids"):
        runs.run_length_of(runs.range_of("video").start)
    with pytest.raises(ValueError, match="run_token_id"):
        runs.to_global("video_run", 1)
    with pytest.raises(ValueError, match="needs a video range"):
        make_vocab(video=None, max_video_run=4)
    with pytest.raises(ValueError, match="max_video_run"):
        make_vocab(max_video_run=-1)
