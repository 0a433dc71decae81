"""SentencePiece text tokenizer, trained in-process, behind the modality-tokenizer interface.

VideoPoet conditions on T5 text embeddings; mmtok instead gives text its own id range in the unified vocabulary, so
the same LM reads and writes captions (v2t). SentencePiece (arXiv 1808.06226) trains a BPE or unigram model on raw
sentences; here it trains from a Python iterable straight into memory (no temp files), and the serialized model is
kept as bytes, so the tokenizer pickles cheaply into data-loader workers.

The text range holds only the SentencePiece pieces: ``<unk>`` is id 0, and there are no text-level ``<bos>``,
``<eos>`` or ``<pad>`` (the unified vocabulary owns those).

Usage::

    tok = TextTokenizer.train(["a red seven drifts up", ...], vocab_size=500, model_type="bpe")
    ids = tok.encode("a red seven")          # list[int];  tok.encode([...]) -> list[list[int]]
    tok.decode(ids)                          # "a red seven"
    tok.save_pretrained(dir); TextTokenizer.from_pretrained(dir)   # dir/text.model + dir/tokenizer_config.json
    tok.save("m.model"); TextTokenizer.load("m.model")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import sentencepiece as spm
import torch

from mmtok.io import atomic_write

__all__ = ["TextTokenizer"]

MODEL_FILE = "text.model"
CONFIG_FILE = "tokenizer_config.json"


class TextTokenizer:
    """A SentencePiece model with the modality-tokenizer surface (``modality="text"``, one codebook, no clock).

    Build it with :meth:`train`, :meth:`load` or :meth:`from_pretrained`; the constructor takes the serialized
    model bytes.
    """

    modality = "text"

    def __init__(self, model_proto: bytes) -> None:
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise TypeError("TextTokenizer needs the serialized SentencePiece model bytes")
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"not a valid SentencePiece model: {e}") from e

    # --------------------------------------------------------------------------------------------- training
    @classmethod
    def train(cls, texts_or_files: str | os.PathLike | Iterable[str | os.PathLike], *, vocab_size: int = 1000,
              model_type: str = "bpe", character_coverage: float = 1.0, byte_fallback: bool = False,
              hard_vocab_limit: bool = True, max_sentence_length: int = 16384, num_threads: int = 1,
              user_defined_symbols: Sequence[str] = ()) -> "TextTokenizer":
        """Train a SentencePiece model in memory.

        Args:
            texts_or_files: a path (str or Path) to a UTF-8 text file with one sentence per line, or an iterable
                whose ``str`` items are sentences and whose ``pathlib.Path`` items are such files.
            vocab_size: number of pieces (the text range of the unified vocabulary), ``<unk>`` included.
            model_type: ``"bpe"`` or ``"unigram"``.
            character_coverage: fraction of characters covered by the alphabet (1.0 for small alphabets).
            byte_fallback: spell unknown characters as UTF-8 byte pieces instead of ``<unk>`` (needs 256 extra
                pieces in ``vocab_size``).
            hard_vocab_limit: unigram only: when False, a corpus too small for ``vocab_size`` gives a smaller model
                instead of an error.
            num_threads: SentencePiece training threads (1 keeps training deterministic).
            user_defined_symbols: strings always kept as single pieces.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        counter: dict[str, Any] = {"lines": 0, "error": None}

        def sentences() -> Iterator[str]:
            try:
                for line in _iter_sentences(texts_or_files):
                    line = line.strip()
                    if line:
                        counter["lines"] += 1
                        yield line
            except Exception as e:  # SentencePiece wraps it in a RuntimeError: keep the original to re-raise
                counter["error"] = e
                raise

        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=writer, vocab_size=int(vocab_size),
                model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
                hard_vocab_limit=hard_vocab_limit, max_sentence_length=max_sentence_length,
                num_threads=num_threads, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                user_defined_symbols=list(user_defined_symbols), minloglevel=2)
        except RuntimeError as e:
            if counter["error"] is not None:
                raise counter["error"] from None
            if counter["lines"] == 0:
                raise ValueError("no training text: every given sentence/file was empty") from e
            raise ValueError(f"SentencePiece training failed on {counter['lines']} sentences with "
                             f"vocab_size={vocab_size}, model_type={model_type!r}: {str(e).rstrip('.')}. "
                             "A small corpus needs a smaller vocab_size (or hard_vocab_limit=False with "
                             "model_type='unigram').") from e
        if counter["lines"] == 0:
            raise ValueError("no training text: every given sentence/file was empty")
        return cls(writer.getvalue())

    # ----------------------------------------------------------------------------------------- interface
    @property
    def codebook_size(self) -> int:
        """Number of text ids (pieces, ``<unk>`` included)."""
        return int(self._sp.GetPieceSize())

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def frame_rate(self) -> None:
        return None

    @property
    def content_digest(self) -> str:
        """16 hex digits hashing the SentencePiece model: part of the vocabulary fingerprint, so a model retrained
        at the same size (same prompt, other ids) never passes as the same layout."""
        return hashlib.sha256(self._proto).hexdigest()[:16]

    @property
    def unk_id(self) -> int:
        return int(self._sp.unk_id())

    def __len__(self) -> int:
        return self.codebook_size

    def encode(self, text: str | Sequence[str]) -> list[int] | list[list[int]]:
        """A string -> ``list[int]``; a list of strings -> ``list[list[int]]``."""
        if isinstance(text, str):
            return list(self._sp.EncodeAsIds(text))
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return self.encode_batch(text)
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several strings at once."""
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch takes a list of str")
        return [list(ids) for ids in self._sp.Encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """``list[int]`` (or a 1-D integer tensor) -> the string; ids outside ``[0, codebook_size)`` raise."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype.is_floating_point:
                raise ValueError(f"decode takes a 1-D integer tensor, got shape {tuple(ids.shape)} {ids.dtype}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.codebook_size]
        if bad:
            raise ValueError(f"{len(bad)} text ids outside [0, {self.codebook_size}), e.g. {bad[0]}")
        return self._sp.DecodeIds(ids)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def id_to_piece(self, i: int) -> str:
        return self._sp.IdToPiece(int(i))

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the SentencePiece ``.model`` file (usable by any SentencePiece runtime), atomically."""
        atomic_write(path, self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Read a SentencePiece ``.model`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        return cls(path.read_bytes())

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """``dir/text.model`` + ``dir/tokenizer_config.json``."""
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        self.save(d / MODEL_FILE)
        config = {"tokenizer_class": "TextTokenizer", "model_file": MODEL_FILE, "vocab_size": self.codebook_size}
        atomic_write(d / CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TextTokenizer":
        d = Path(directory)
        if not (d / MODEL_FILE).is_file():
            raise FileNotFoundError(f"no {MODEL_FILE} in {d}: not a saved TextTokenizer")
        tok = cls.load(d / MODEL_FILE)
        cfg_path = d / CONFIG_FILE
        if cfg_path.is_file():
            expected = json.loads(cfg_path.read_text()).get("vocab_size")
            if expected is not None and expected != tok.codebook_size:
                raise ValueError(f"{cfg_path} records vocab_size={expected} but {MODEL_FILE} has "
                                 f"{tok.codebook_size} pieces")
        return tok

    # ------------------------------------------------------------------------------------------- misc
    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextTokenizer) and other._proto == self._proto

    def __hash__(self) -> int:
        return hash(self._proto)

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.codebook_size})"


def _iter_sentences(source: Any) -> Iterator[str]:
    if isinstance(source, (str, os.PathLike)):
        yield from _read_lines(Path(source))
        return
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("texts_or_files must be a path or an iterable of str/Path, got bytes")
    for item in source:
        if isinstance(item, Path):
            yield from _read_lines(item)
        elif isinstance(item, str):
            yield from item.splitlines()
        else:
            raise TypeError(f"training items must be str (a sentence) or pathlib.Path (a file), "
                            f"got {type(item).__name__}")


def _read_lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise FileNotFoundError(f"training text file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise ValueError(f"training text file {path} is not UTF-8: {e}") from e
