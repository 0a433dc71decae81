"""The ``MultimodalTokenizer`` bundle: text, video and audio tokenizers plus the unified vocabulary, as one object.

It turns raw media into task sequences for the LM and generated sequences back into media::

    tok = MultimodalTokenizer(text=TextTokenizer.train(...), video=VideoTokenizer(...), audio=AudioTokenizer(...),
                              num_audio_levels=4)
    ex = tok.encode_example("t2v", text="a red seven drifts up", video=frames_uint8_THWC)   # TaskExample
    codes = tok.encode_media(text="...", video=frames, audio=wave)
    # -> {"text": ids, "video": [T', H', W'], "audio": [n_q, F]} (local codes)
    ex = tok.build("v2a", video=codes["video"], audio=codes["audio"])                      # from pre-tokenized codes
    out = tok.decode(ex.input_ids)          # DecodedExample(text=str, video=[3,T,H,W], audio=[1,N], parsed=...)
    tok.save_pretrained(d); MultimodalTokenizer.from_pretrained(d)

Directory layout written by :meth:`MultimodalTokenizer.save_pretrained` (it coexists with an LM's ``config.json`` /
``model.safetensors`` in one export folder)::

    multimodal_tokenizer.json   parts (import path of each class + subfolder), sequence settings, vocab fingerprint
    vocab.json                  the UnifiedVocabulary
    text/ video/ audio/         each part's own save_pretrained output

Any part with ``save_pretrained(dir)`` / ``from_pretrained(dir)`` can be bundled. The manifest records each part's
class by name, and loading resolves that name through a fixed registry (mmtok's own tokenizers, classes added with
:func:`register_tokenizer_class`, and models registered with transformers' ``AutoModel``), never by importing what
the file names: a bundle is data, and loading one must not run code it chose. Loading checks the vocabulary against
the tokenizers and raises :class:`mmtok.vocab.VocabularyMismatchError` naming both layouts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mmtok.interface import code_spec
from mmtok.io import atomic_write
from mmtok.sequence import AUDIO_PATTERNS, ParsedSequence, TaskExample, build_example, build_prompt, parse_sequence
from mmtok.vocab import UnifiedVocabulary, VocabularyMismatchError

__all__ = ["DecodedExample", "MultimodalTokenizer", "register_tokenizer_class"]

BUNDLE_FILE = "multimodal_tokenizer.json"
VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1
_PARTS = ("text", "video", "audio")


# ----------------------------------------------------------------------------------------------- class registry
_TOKENIZER_CLASSES: dict[str, type] = {}


def class_name(cls: type) -> str:
    """The name a bundle manifest records for ``cls``: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_tokenizer_class(cls: type) -> type:
    """Allow ``cls`` as a part of saved bundles (usable as a class decorator); returns ``cls``.

    mmtok's own tokenizers are registered already. A bundle manifest names each part's class, and
    :meth:`MultimodalTokenizer.from_pretrained` accepts only registered names, so register your own tokenizer class
    (one with ``save_pretrained`` / ``from_pretrained``) before loading a bundle that holds it, or name the module
    that registers it in ``$MMTOK_TOKENIZER_MODULES`` (for recipes run as scripts and their worker processes).
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_tokenizer_class takes a class, got {type(cls).__name__}")
    _TOKENIZER_CLASSES[class_name(cls)] = cls
    return cls


TOKENIZER_MODULES_ENV = "MMTOK_TOKENIZER_MODULES"


def _known_classes() -> dict[str, type]:
    """The registry, with mmtok's own classes and the modules the user lists in ``$MMTOK_TOKENIZER_MODULES``
    (comma-separated; each registers its classes on import). The variable is how a user's own tokenizer reaches
    processes the user starts (spawned tokenization workers, recipes run as scripts); a bundle file cannot set it."""
    if "mmtok.text.TextTokenizer" not in _TOKENIZER_CLASSES:  # imported here to avoid import cycles
        from mmtok.audio.encodec_bridge import EncodecAudioTokenizer
        from mmtok.audio.modeling_audio import AudioTokenizer
        from mmtok.text import TextTokenizer
        from mmtok.video.modeling_video import VideoTokenizer

        for cls in (TextTokenizer, VideoTokenizer, AudioTokenizer, EncodecAudioTokenizer):
            register_tokenizer_class(cls)
    for module in filter(None, (m.strip() for m in os.environ.get(TOKENIZER_MODULES_ENV, "").split(","))):
        if module not in sys.modules:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ImportError(f"${TOKENIZER_MODULES_ENV} lists {module!r}, which cannot be imported: {e}") from e
    return _TOKENIZER_CLASSES


def resolve_tokenizer_class(name: Any, folder: Path, field: str) -> type:
    """The class a manifest ``field`` names: a registered tokenizer class, or the model class transformers'
    ``AutoModel`` has registered for the ``model_type`` in ``folder/config.json`` when that class has this name.
    Anything else is a ``ValueError`` naming the field; nothing is imported."""
    if not isinstance(name, str):
        raise ValueError(f"{field} must be a class name (a string), got {name!r}")
    known = _known_classes()
    if name in known:
        return known[name]
    config_path = folder / "config.json"
    if config_path.is_file():
        from transformers import AutoConfig, AutoModel

        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
            config_cls = type(AutoConfig.for_model(model_type)) if isinstance(model_type, str) else None
            model_cls = AutoModel._model_mapping[config_cls] if config_cls is not None else None
        except (ValueError, KeyError, AttributeError, json.JSONDecodeError):
            model_cls = None
        if model_cls is not None and class_name(model_cls) == name:
            return model_cls
    raise ValueError(f"{field} names {name!r}, which is not a registered tokenizer class (registered: "
                     f"{sorted(known)}); bundles never import classes by name: import the module that defines it and "
                     "call mmtok.multimodal.register_tokenizer_class on the class first (in the module's own code, "
                     f"and list that module in ${TOKENIZER_MODULES_ENV} for processes that load the bundle by path)")


@dataclass
class DecodedExample:
    """What :meth:`MultimodalTokenizer.decode` recovers from a sequence.

    Attributes:
        text: the decoded string, or ``None``.
        video: float ``[3, T, H, W]`` in [-1, 1] from the video tokenizer (the whole video: condition frames and
            output frames), or ``None``.
        audio: float ``[1, N]`` waveform from the audio tokenizer, or ``None``.
        parsed: the :class:`~mmtok.sequence.ParsedSequence` (local codes, condition/output split, repairs made).
    """

    text: str | None
    video: torch.Tensor | None
    audio: torch.Tensor | None
    parsed: ParsedSequence


class MultimodalTokenizer:
    """Text, video and audio tokenizers with their unified vocabulary and sequence settings.

    Args:
        text, video, audio: tokenizers implementing :class:`mmtok.interface.ModalityTokenizer` (any may be ``None``).
        vocab: the vocabulary; by default laid out from the tokenizers. A given vocabulary is checked against them.
        num_audio_levels: RVQ levels in the sequences (default: the vocabulary's, which defaults to the codec's).
        audio_pattern: ``"frame_major"`` or ``"level_major"`` audio flattening.
        latent_hw: ``(H', W')`` of the video latents, needed to parse video out of a flat sequence. When ``None``,
            the first video that :meth:`encode_media` encodes sets it.
        video_runs: build sequences with their video conditions in run-length form (``build_example``'s
            ``video_runs``); needs a vocabulary with run tokens. :meth:`with_video_runs` makes such a bundle from a
            plain one. Saved with the bundle, so a model trained on run-length conditions is prompted with them.
    """

    def __init__(self, *, text: Any = None, video: Any = None, audio: Any = None,
                 vocab: UnifiedVocabulary | None = None, num_audio_levels: int | None = None,
                 audio_pattern: str = "frame_major", latent_hw: Sequence[int] | None = None,
                 video_runs: bool = False) -> None:
        for name, part in (("text", text), ("video", video), ("audio", audio)):
            if part is not None:
                spec = code_spec(part)  # TypeError naming the missing interface members
                if spec.modality != name and not (name == "video" and spec.modality == "image"):
                    raise ValueError(f"{name}= got a tokenizer of modality {spec.modality!r}")
        if vocab is None:
            vocab = UnifiedVocabulary.from_tokenizers(text=text, video=video, audio=audio,
                                                      num_audio_levels=num_audio_levels)
        else:
            vocab.check_tokenizers(text=text, video=video, audio=audio)
        if audio_pattern not in AUDIO_PATTERNS:
            raise ValueError(f"unknown audio pattern {audio_pattern!r}; expected one of {AUDIO_PATTERNS}")
        levels = vocab.num_audio_levels if num_audio_levels is None else int(num_audio_levels)
        if audio is not None and not 1 <= levels <= vocab.num_audio_levels:
            raise ValueError(f"num_audio_levels={num_audio_levels} exceeds the vocabulary's "
                             f"{vocab.num_audio_levels} audio levels")
        self.text, self.video, self.audio, self.vocab = text, video, audio, vocab
        self.num_audio_levels = levels if audio is not None else None
        self.audio_pattern = audio_pattern
        self.latent_hw: tuple[int, int] | None = None if latent_hw is None else (int(latent_hw[0]),
                                                                                 int(latent_hw[1]))
        if video_runs and not vocab.max_video_run:
            raise ValueError(f"video_runs=True needs a vocabulary with run tokens ({vocab.describe()}); use "
                             "bundle.with_video_runs()")
        self.video_runs = bool(video_runs)

    def with_video_runs(self, max_run: int | None = None) -> "MultimodalTokenizer":
        """This bundle (the same tokenizer objects) with run tokens ``<run_1> .. <run_n>`` appended to its
        vocabulary and ``video_runs=True``: its sequences write video conditions in run-length form.

        ``max_run`` (default: a whole latent frame, ``H' * W'``, which needs ``latent_hw``) is the longest run one
        token folds. Every id of the plain vocabulary keeps its meaning (the run tokens come last); the fingerprint
        is that of the new layout.
        """
        if max_run is None:
            if self.latent_hw is None:
                raise ValueError("with_video_runs() needs the bundle's latent_hw (H', W') to size the run tokens, "
                                 "or an explicit max_run")
            max_run = self.latent_hw[0] * self.latent_hw[1]
        return MultimodalTokenizer(text=self.text, video=self.video, audio=self.audio,
                                   vocab=self.vocab.with_video_runs(int(max_run)),
                                   num_audio_levels=self.num_audio_levels, audio_pattern=self.audio_pattern,
                                   latent_hw=self.latent_hw, video_runs=True)

    # ----------------------------------------------------------------------------------------------- encode
    @torch.no_grad()
    def encode_media(self, *, text: str | Sequence[int] | None = None, video: torch.Tensor | None = None,
                     audio: torch.Tensor | None = None, video_kwargs: dict[str, Any] | None = None,
                     audio_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tokenize one example's media into local codes (what pre-tokenized shards store).

        Args:
            text: a string (or already-encoded ids, passed through).
            video: one clip: uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` in [-1, 1].
            audio: one waveform: float ``[1, N]`` or ``[N]`` at the audio tokenizer's sample rate.
            video_kwargs, audio_kwargs: extra keyword arguments for the tokenizers' ``encode`` (e.g.
                ``video_kwargs={"pad": True}``, ``audio_kwargs={"num_quantizers": 4}``).

        Returns:
            ``{"text": list[int], "video": LongTensor [T', H', W'], "audio": LongTensor [n_q, frames]}`` for the
            modalities given.
        """
        out: dict[str, Any] = {}
        if text is not None:
            if isinstance(text, str):
                out["text"] = list(self._need("text").encode(text))
            else:
                ids = [int(i) for i in text]
                self.vocab.to_global("text", ids)  # range check
                out["text"] = ids
        if video is not None:
            tok = self._need("video")
            if not isinstance(video, torch.Tensor) or video.dim() != 4:
                raise ValueError("video must be one clip, uint8 [T, H, W, 3] or float [3, T, H, W]; got "
                                 f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
            codes = torch.as_tensor(tok.encode(video.unsqueeze(0), **(video_kwargs or {})))
            if codes.dim() != 4 or codes.shape[0] != 1:
                raise ValueError(f"the video tokenizer returned codes of shape {tuple(codes.shape)}, "
                                 "expected [1, T', H', W']")
            codes = codes[0].long()
            if self.latent_hw is None:
                self.latent_hw = (int(codes.shape[1]), int(codes.shape[2]))
            out["video"] = codes
        if audio is not None:
            tok = self._need("audio")
            if not isinstance(audio, torch.Tensor) or audio.dim() not in (1, 2) or \
                    (audio.dim() == 2 and audio.shape[0] != 1) or not audio.dtype.is_floating_point:
                got = (f"shape {tuple(audio.shape)} {audio.dtype}" if isinstance(audio, torch.Tensor)
                       else type(audio).__name__)
                raise ValueError(f"audio must be one mono float waveform [1, N] or [N]; got {got}")
            wav = audio.reshape(1, 1, -1)
            codes = torch.as_tensor(tok.encode(wav, **(audio_kwargs or {})))
            if codes.dim() != 3 or codes.shape[0] != 1:
                raise ValueError(f"the audio tokenizer returned codes of shape {tuple(codes.shape)}, "
                                 "expected [1, n_q, frames]")
            out["audio"] = codes[0].long()
        return out

    def build(self, task: str, *, text: Sequence[int] | torch.Tensor | None = None,
              video: torch.Tensor | None = None, audio: torch.Tensor | None = None, **kwargs: Any) -> TaskExample:
        """:func:`mmtok.sequence.build_example` on local codes with this bundle's vocabulary and audio settings."""
        kwargs.setdefault("audio_pattern", self.audio_pattern)
        kwargs.setdefault("num_audio_levels", self.num_audio_levels)
        kwargs.setdefault("video_runs", self.video_runs)
        return build_example(task, self.vocab, text=text, video=video, audio=audio, **kwargs)

    def build_prompt(self, task: str, **kwargs: Any) -> torch.Tensor:
        """:func:`mmtok.sequence.build_prompt` with this bundle's vocabulary and audio settings."""
        kwargs.setdefault("audio_pattern", self.audio_pattern)
        kwargs.setdefault("num_audio_levels", self.num_audio_levels)
        kwargs.setdefault("video_runs", self.video_runs)
        return build_prompt(task, self.vocab, **kwargs)

    def encode_example(self, task: str, *, text: str | Sequence[int] | None = None,
                       video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                       **kwargs: Any) -> TaskExample:
        """Tokenize raw media (see :meth:`encode_media`) and build the ``task`` sequence (``kwargs`` go to
        :func:`~mmtok.sequence.build_example`: ``cond_frames``, ``cond_dropout``, ``rng``, ...)."""
        codes = self.encode_media(text=text, video=video, audio=audio)
        return self.build(task, **codes, **kwargs)

    # ----------------------------------------------------------------------------------------------- decode
    def parse(self, ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> ParsedSequence:
        """:func:`mmtok.sequence.parse_sequence` with this bundle's vocabulary, audio settings and ``latent_hw``."""
        kwargs.setdefault("audio_pattern", self.audio_pattern)
        kwargs.setdefault("num_audio_levels", self.num_audio_levels)
        kwargs.setdefault("latent_hw", self.latent_hw)
        return parse_sequence(ids, self.vocab, **kwargs)

    @torch.no_grad()
    def decode(self, ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> DecodedExample:
        """Parse a task sequence (``kwargs`` as for :func:`~mmtok.sequence.parse_sequence`, e.g. ``task``,
        ``video_frames``, ``repair``) and decode its text, video and audio with the tokenizers."""
        parsed = self.parse(ids, **kwargs)
        text = video = audio = None
        if parsed.text is not None:
            text = self._need("text").decode(parsed.text)
        if parsed.video is not None:
            out = torch.as_tensor(self._need("video").decode(parsed.video.unsqueeze(0)))
            video = out[0]
        if parsed.audio is not None:
            out = torch.as_tensor(self._need("audio").decode(parsed.audio.unsqueeze(0)))  # [1, 1, N]
            audio = out[0] if out.dim() == 3 else out.reshape(1, -1)
        return DecodedExample(text, video, audio, parsed)

    # -------------------------------------------------------------------------------------------- checks
    def check_fingerprint(self, fingerprint: str, *, layout: str | None = None, what: str = "model") -> None:
        """Raise :class:`~mmtok.vocab.VocabularyMismatchError` if a model's recorded vocabulary fingerprint differs
        (the error names both layouts)."""
        self.vocab.check_fingerprint(fingerprint, layout=layout, what=what)

    # --------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write every part into ``save_directory`` (a subfolder each), the vocabulary and the bundle manifest.

        The manifest is written last and atomically, so a directory with a manifest is always complete.
        """
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        parts = {}
        for name in _PARTS:
            part = getattr(self, name)
            if part is None:
                continue
            if not (callable(getattr(part, "save_pretrained", None))
                    and callable(getattr(type(part), "from_pretrained", None))):
                raise TypeError(f"the {name} tokenizer ({type(part).__name__}) has no save_pretrained/"
                                "from_pretrained, so the bundle cannot store it")
            known = _known_classes()
            if class_name(type(part)) not in known:
                raise TypeError(f"the {name} tokenizer's class {class_name(type(part))} is not registered, so the "
                                "saved bundle could not be loaded: call mmtok.multimodal.register_tokenizer_class "
                                "on it")
            part.save_pretrained(d / name)
            parts[name] = {"class": class_name(type(part)), "subfolder": name}
        self.vocab.to_json(d / VOCAB_FILE)
        manifest = {
            "format_version": FORMAT_VERSION,
            "parts": parts,
            "vocab_file": VOCAB_FILE,
            "vocab_fingerprint": self.vocab.fingerprint,
            "vocab_layout": self.vocab.describe(),
            "sequence": {"audio_pattern": self.audio_pattern, "num_audio_levels": self.num_audio_levels,
                         "latent_hw": list(self.latent_hw) if self.latent_hw is not None else None,
                         # only when set: a plain bundle's manifest stays as it was before run-length form existed
                         **({"video_runs": True} if self.video_runs else {})},
        }
        atomic_write(d / BUNDLE_FILE, json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **part_kwargs: Any) -> "MultimodalTokenizer":
        """Restore a bundle written by :meth:`save_pretrained`.

        ``part_kwargs`` maps a part name to keyword arguments for its ``from_pretrained`` (e.g.
        ``video={"torch_dtype": torch.float32}``). Raises ``FileNotFoundError`` for a missing directory or manifest,
        ``ValueError`` naming a manifest field whose class is not registered (see
        :func:`register_tokenizer_class`; nothing named in the file is imported), and
        :class:`~mmtok.vocab.VocabularyMismatchError` when the vocabulary and the tokenizers disagree.
        """
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer bundle directory not found: {d}")
        manifest_path = d / BUNDLE_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no {BUNDLE_FILE} in {d}: not a saved MultimodalTokenizer")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest_path} is not valid JSON: {e}") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: unsupported format_version {manifest.get('format_version')!r}")
        unknown = set(part_kwargs) - set(_PARTS)
        if unknown:
            raise TypeError(f"unknown parts in from_pretrained kwargs: {sorted(unknown)}")
        parts: dict[str, Any] = {}
        for name, entry in manifest.get("parts", {}).items():
            if name not in _PARTS:
                raise ValueError(f"{manifest_path}: unknown part {name!r}")
            subfolder = entry.get("subfolder", name)
            if not isinstance(subfolder, str) or Path(subfolder).is_absolute() or ".." in Path(subfolder).parts:
                raise ValueError(f"{manifest_path}: parts.{name}.subfolder must be a folder inside the bundle, "
                                 f"got {subfolder!r}")
            sub = d / subfolder
            if not sub.is_dir():
                raise FileNotFoundError(f"the {name} tokenizer folder {sub} is missing from the bundle")
            part_cls = resolve_tokenizer_class(entry.get("class"), sub, f"{manifest_path}: parts.{name}.class")
            parts[name] = part_cls.from_pretrained(sub, **part_kwargs.get(name, {}))
        vocab = UnifiedVocabulary.from_json(d / manifest.get("vocab_file", VOCAB_FILE))
        recorded = manifest.get("vocab_fingerprint")
        if recorded is not None and recorded != vocab.fingerprint:
            raise VocabularyMismatchError(
                f"{manifest_path} records vocabulary fingerprint {recorded} but {VOCAB_FILE} has {vocab.fingerprint}"
                f"\n  manifest: {manifest.get('vocab_layout', '?')}\n  {VOCAB_FILE}: {vocab.describe()}")
        seq = manifest.get("sequence", {})
        return cls(**parts, vocab=vocab, num_audio_levels=seq.get("num_audio_levels"),
                   audio_pattern=seq.get("audio_pattern", "frame_major"), latent_hw=seq.get("latent_hw"),
                   video_runs=bool(seq.get("video_runs", False)))

    # ------------------------------------------------------------------------------------------- misc
    def _need(self, name: str) -> Any:
        part = getattr(self, name)
        if part is None:
            raise ValueError(f"this MultimodalTokenizer has no {name} tokenizer")
        return part

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={type(getattr(self, n)).__name__}" for n in _PARTS if getattr(self, n) is not None)
        return f"MultimodalTokenizer({parts}; {self.vocab.describe()})"
