"""TextTokenizer: in-process SentencePiece training, encode/decode, persistence, interface and errors."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.interface import ModalityTokenizer, code_spec
from mmtok.text import TextTokenizer

WORDS = ("a the red green blue yellow seven three nine digit moves drifts heading up down left right north "
         "south east west in slowly quickly bounces").split()


def corpus(n=400, seed=0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(corpus(), vocab_size=120, model_type="bpe")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12))
def test_decode_inverts_encode(tok, words):
    text = " ".join(words)
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.codebook_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text


def test_training_gives_the_asked_size_and_is_deterministic(tok):
    assert tok.codebook_size == 120 and len(tok) == 120
    again = TextTokenizer.train(corpus(), vocab_size=120, model_type="bpe")
    assert again == tok
    uni = TextTokenizer.train(corpus(), vocab_size=45, model_type="unigram")
    assert uni.codebook_size == 45
    assert uni.decode(uni.encode("the red seven drifts up")) == "the red seven drifts up"
    assert tok.id_to_piece(tok.unk_id) == "<unk>" and tok.unk_id == 0


def test_batch_encode_matches_single(tok):
    texts = ["a red seven", "the digit nine bounces", ""]
    assert tok.encode(texts) == [tok.encode(t) for t in texts] == tok.encode_batch(texts)
    assert tok.decode_batch(tok.encode(texts)) == texts


def test_train_from_files(tmp_path: Path, tok):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(corpus()) + "\n\n")
    from_path = TextTokenizer.train(str(path), vocab_size=120)
    from_paths = TextTokenizer.train([path], vocab_size=120)
    assert from_path == tok and from_paths == tok


def test_save_load_round_trip(tmp_path: Path, tok):
    tok.save(tmp_path / "m.model")
    assert TextTokenizer.load(tmp_path / "m.model") == tok
    tok.save_pretrained(tmp_path / "dir")
    loaded = TextTokenizer.from_pretrained(tmp_path / "dir")
    assert loaded == tok and loaded.encode("a red seven") == tok.encode("a red seven")
    assert pickle.loads(pickle.dumps(tok)).encode("west") == tok.encode("west")


def test_implements_the_interface(tok):
    assert isinstance(tok, ModalityTokenizer)
    spec = code_spec(tok)
    assert (spec.modality, spec.codebook_size, spec.num_codebooks) == ("text", 120, 1)
    assert tok.frame_rate is None


def test_errors_name_the_problem(tmp_path: Path, tok):
    with pytest.raises(ValueError, match="no training text"):
        TextTokenizer.train(["", "  "], vocab_size=50)
    with pytest.raises(ValueError, match="smaller vocab_size"):
        TextTokenizer.train(corpus(20), vocab_size=5000)
    with pytest.raises(ValueError, match="model_type"):
        TextTokenizer.train(corpus(), model_type="wordpiece")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextTokenizer.train([tmp_path / "missing.txt"], vocab_size=50)
    with pytest.raises(TypeError, match="got int"):
        TextTokenizer.train(["a b", 3], vocab_size=50)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1") * 10)
    with pytest.raises(ValueError, match="not UTF-8"):
        TextTokenizer.train([bad], vocab_size=50)
    with pytest.raises(ValueError, match="text ids outside"):
        tok.decode([0, 120])
    with pytest.raises(TypeError, match="str"):
        tok.encode(42)
    with pytest.raises(FileNotFoundError, match="text.model"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        TextTokenizer.load(tmp_path / "junk.model")


def test_a_retrained_tokenizer_of_the_same_size_is_another_vocabulary(tok):
    """Same size, other corpus: the same prompt gets other ids, so the vocabulary fingerprint must differ and the
    vocabulary must refuse the other tokenizer."""
    from mmtok.vocab import UnifiedVocabulary, VocabularyMismatchError

    other = TextTokenizer.train(corpus(seed=7), vocab_size=120, model_type="bpe")
    assert other.codebook_size == tok.codebook_size and other.content_digest != tok.content_digest
    assert other.encode("the red seven drifts up") != tok.encode("the red seven drifts up")
    mine, theirs = UnifiedVocabulary(text=tok), UnifiedVocabulary(text=other)
    assert mine.fingerprint != theirs.fingerprint
    assert UnifiedVocabulary(text=TextTokenizer.train(corpus(), vocab_size=120)).fingerprint == mine.fingerprint
    with pytest.raises(VocabularyMismatchError, match="not the one the vocabulary was built with"):
        mine.check_tokenizers(text=other)
    assert UnifiedVocabulary.from_dict(mine.to_dict()).fingerprint == mine.fingerprint
