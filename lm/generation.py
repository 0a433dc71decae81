"""Generation with the mmtok token LM: text-to-video, text-to-image, video-to-audio, audio-to-video, continuation.

One call turns a condition (a caption, a clip, a waveform) into media::

    gen = MultimodalGenerator.from_pretrained("outputs/demo/lm/export")     # LM + tokenizer bundle side by side
    out = gen.text_to_video("a red seven drifts up", num_samples=2, cfg_scale=3.0, top_k=100, seed=0)
    out.video            # float [N, 3, T, H, W] in [-1, 1]; out.frames(i) -> uint8 [T, H, W, 3]
    gen.video_to_audio(frames_uint8_THWC).audio          # [N, 1, S] at gen.sample_rate
    gen.continue_video(first_9_frames, num_frames=8)     # the input's reconstruction + 8 new frames
    gen.audio_to_video(wave)                              # [N, 3, T, H, W]
    gen.text_to_image("the digit 3 in blue").image       # [N, 3, H, W]

(``MultimodalGenerator(model, bundle)`` for a model and bundle already in memory.)

How a sample is drawn (:meth:`MultimodalGenerator.generate_from_codes`, the core every task goes through):

1. The prompt is :func:`mmtok.sequence.build_prompt`'s prefix (``<bos> <task> condition <output opener>``); with
   classifier-free guidance the unconditional prompt (the same layout with empty condition bodies, what training's
   condition dropout shows the model) is built too. Prompts of different lengths are left-padded with ``<pad>``
   under an attention mask; every row then ends at the same column, so ``prefix_len`` (prefix-LM attention) is that
   column for every row, and RoPE, being relative, gives padded rows the same attention as unpadded ones.
2. Conditional and unconditional rows run as *one* batch ``[2B, L]`` through the model each step, with a
   transformers :class:`~transformers.DynamicCache` (``use_cache=False`` recomputes the whole sequence each step:
   same tokens, for checking). Guided logits: ``cond + (s - 1) * (cond - uncond)``, which is
   ``uncond + s * (cond - uncond)`` and equals ``cond`` exactly at ``s = 1``.
3. :class:`RangeConstraintLogitsProcessor` keeps, at output position ``i``, only the ids in
   :func:`mmtok.sequence.output_constraints`' ``[lo_i, hi_i)``: the video range, the exact RVQ level's audio range,
   or the one boundary / ``<eos>`` token. The output therefore has exactly the task's token count and always
   parses (strictly) and decodes, even from an untrained model.
4. Temperature, top-k and top-p are transformers' own warpers; ``temperature=0`` is greedy. The draw uses a
   ``torch.Generator`` seeded with ``seed``: the same seed, inputs and settings give the same tokens.

Why not ``model.generate`` for everything: HF ``generate`` samples each batch row on its own, so a doubled CFG
batch would let the unconditional rows drift from the conditional ones, and it draws from the global RNG rather
than a ``torch.Generator``. The loop here is short and uses the model's forward, cache and HF's warpers;
:class:`RangeConstraintLogitsProcessor` also plugs into ``model.generate(..., logits_processor=[...])`` for
unguided decoding (the tests check both give the same greedy tokens).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, \
    TopPLogitsWarper
from transformers.cache_utils import DynamicCache

from mmtok.frames import to_uint8
from mmtok.io import progress_enabled
from mmtok.sequence import TASKS, ParsedSequence, output_constraints

__all__ = [
    "GenerationError",
    "GenerationResult",
    "MultimodalGenerator",
    "RangeConstraintLogitsProcessor",
    "SamplingConfig",
    "sample_tokens",
]

GENERATION_TASKS = ("t2v", "t2i", "v2a", "a2v", "vcont", "i2v")


class GenerationError(ValueError):
    """An input the model or its tokenizers cannot take (wrong size, wrong task, missing tokenizer, ...)."""


# ------------------------------------------------------------------------------------------------ sampling knobs
@dataclass
class SamplingConfig:
    """How tokens are drawn.

    Attributes:
        temperature: softmax temperature; ``0`` means greedy (argmax) decoding.
        top_k: keep the ``top_k`` most likely allowed ids (``None``/``0``: all).
        top_p: nucleus sampling: keep the smallest set of ids whose probability reaches ``top_p`` (``None``/``1``:
            all).
        cfg_scale: classifier-free guidance scale ``s`` (``None``: no guidance, one pass). Any number, ``1.0``
            included, runs the conditional and unconditional rows together; ``s = 1`` gives exactly the
            conditional logits, larger ``s`` follows the condition more closely (Emu3 uses ~3).
        num_samples: samples drawn per input.
        seed: seed of the ``torch.Generator`` used for sampling (``None``: torch's global generator).
        use_cache: decode with a KV cache (``False`` recomputes the whole sequence every step; same tokens).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None
    num_samples: int = 1
    seed: int | None = None
    use_cache: bool = True

    def validate(self) -> "SamplingConfig":
        if not self.temperature >= 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None = off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.cfg_scale is not None and not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number (or None for no guidance), got {self.cfg_scale}")
        if int(self.num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def warpers(self) -> LogitsProcessorList:
        """transformers' temperature / top-k / top-p warpers for these settings (empty when greedy)."""
        procs = LogitsProcessorList()
        if self.greedy:
            return procs
        if self.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(float(self.temperature)))
        if self.top_k:
            procs.append(TopKLogitsWarper(int(self.top_k)))
        if self.top_p is not None and self.top_p < 1.0:
            procs.append(TopPLogitsWarper(float(self.top_p)))
        return procs


_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale", "num_samples", "seed", "use_cache")


def _sampling(sampling: SamplingConfig | None, kwargs: dict[str, Any]) -> SamplingConfig:
    """A :class:`SamplingConfig` from an optional base and keyword overrides (unknown keywords raise)."""
    unknown = set(kwargs) - set(_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown generation arguments {sorted(unknown)}; sampling takes {', '.join(_SAMPLING_FIELDS)}")
    base = sampling if sampling is not None else SamplingConfig()
    values = {name: getattr(base, name) for name in _SAMPLING_FIELDS}
    values.update(kwargs)
    return SamplingConfig(**values).validate()


# ------------------------------------------------------------------------------------------ constrained decoding
class RangeConstraintLogitsProcessor(LogitsProcessor):
    """Allow, at output position ``i``, only the ids in ``[lo_i, hi_i)`` (``-inf`` elsewhere).

    Args:
        constraints: LongTensor ``[n, 2]`` from :func:`mmtok.sequence.output_constraints`.
        prompt_len: length of the (padded) prompt: the output position is ``input_ids.shape[1] - prompt_len``.

    Works as a transformers logits processor (``model.generate(..., logits_processor=LogitsProcessorList([p]))``,
    with ``max_new_tokens = n``); past the last position only ``<eos>``-like ids of the final range stay allowed.
    """

    def __init__(self, constraints: torch.Tensor, prompt_len: int):
        constraints = torch.as_tensor(constraints)
        if constraints.dim() != 2 or constraints.shape[1] != 2 or constraints.shape[0] < 1:
            raise ValueError(f"constraints must be [n, 2] of [lo, hi), got shape {tuple(constraints.shape)}")
        if bool((constraints[:, 1] <= constraints[:, 0]).any()):
            raise ValueError("every constraint range must be non-empty (lo < hi)")
        self.constraints = constraints.long()
        self.prompt_len = int(prompt_len)

    def bounds(self, position: int) -> tuple[int, int]:
        """``(lo, hi)`` of output position ``position`` (clamped to the last one)."""
        if position < 0:
            raise ValueError(f"output position {position} is inside the prompt (prompt_len={self.prompt_len})")
        lo, hi = self.constraints[min(position, self.constraints.shape[0] - 1)].tolist()
        return lo, hi

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        lo, hi = self.bounds(input_ids.shape[1] - self.prompt_len)
        if hi > scores.shape[-1]:
            raise ValueError(f"the constraint range [{lo}, {hi}) exceeds the model's {scores.shape[-1]} logits")
        out = torch.full_like(scores, float("-inf"))  # [B, V]
        out[:, lo:hi] = scores[:, lo:hi]
        return out


@torch.no_grad()
def sample_tokens(model: Any, prompts: Sequence[torch.Tensor], constraints: torch.Tensor, *,
                  uncond_prompts: Sequence[torch.Tensor] | None = None, sampling: SamplingConfig | None = None,
                  pad_id: int = 0, progress: bool | None = None, description: str = "generating") -> torch.Tensor:
    """Draw ``constraints.shape[0]`` tokens after each prompt: the decoding loop behind every task.

    Args:
        model: a causal LM whose forward takes ``input_ids``, ``attention_mask``, ``cache``,
            ``use_cache``, ``logits_to_keep`` and ``prefix_len`` (:class:`lm.MMLMForCausalLM`).
        prompts: ``B`` 1-D LongTensors of global ids (lengths may differ).
        constraints: LongTensor ``[n, 2]``, the allowed ``[lo, hi)`` per output position (shared by all prompts).
        uncond_prompts: the ``B`` unconditional prompts; required when ``sampling.cfg_scale`` is set.
        sampling: :class:`SamplingConfig` (``num_samples`` rows are drawn per prompt, prompt-major).
        pad_id: id used for left padding (masked out of attention).
        progress: show a tqdm bar (default: :func:`mmtok.io.progress_enabled`).

    Returns:
        LongTensor ``[B * num_samples, n]`` of generated global ids; rows ``b * num_samples + j`` are the samples
        of prompt ``b``.
    """
    cfg = (sampling if sampling is not None else SamplingConfig()).validate()
    if len(prompts) == 0:
        raise ValueError("no prompts to generate from")
    guided = cfg.cfg_scale is not None
    if guided and (uncond_prompts is None or len(uncond_prompts) != len(prompts)):
        raise ValueError("classifier-free guidance needs one unconditional prompt per prompt")
    ns = int(cfg.num_samples)
    cond = [torch.as_tensor(p).long().reshape(-1) for p in prompts for _ in range(ns)]
    rows = cond + ([torch.as_tensor(p).long().reshape(-1) for p in uncond_prompts for _ in range(ns)]
                   if guided else [])
    b = len(cond)
    device = next(model.parameters()).device
    width = max(int(r.numel()) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [R, P], left-padded
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [R, P]
    for i, r in enumerate(rows):
        ids[i, width - r.numel():] = r
        mask[i, width - r.numel():] = 1
    ids, mask = ids.to(device), mask.to(device)
    padded = bool((mask == 0).any())
    # Every row ends at column `width`: the whole prompt (the output opener included) is the prefix.
    prefix_len = torch.full((len(rows),), width, dtype=torch.long, device=device)  # [R]
    constraint = RangeConstraintLogitsProcessor(constraints, width)
    warpers = cfg.warpers()
    generator = None
    if cfg.seed is not None and not cfg.greedy:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(cfg.seed))
    n = int(constraint.constraints.shape[0])
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and width + n > limit:
        warnings.warn(f"prompt ({width}) + output ({n}) tokens exceed the model's max_position_embeddings {limit}; "
                      "quality past the trained length is not guaranteed", stacklevel=2)

    cache = DynamicCache(config=model.config) if cfg.use_cache else None
    out = torch.empty((b, 0), dtype=torch.long, device=device)  # [B, t]
    step_input = ids
    show = progress_enabled() if progress is None else progress
    for step in tqdm(range(n), desc=description, unit="tok", disable=not show, leave=False):
        attn = mask if padded else None
        if cfg.use_cache:
            extra = {}
            if getattr(model.config, "video_grid", None) is not None:   # the cached step sees only its new tokens
                extra["video_positions"] = model.model.video_token_positions(ids, last=step_input.shape[1])
            res = model(input_ids=step_input, attention_mask=attn, cache=cache, use_cache=True,
                        prefix_len=prefix_len, logits_to_keep=1, **extra)
        else:
            res = model(input_ids=ids, attention_mask=attn, use_cache=False, prefix_len=prefix_len,
                        logits_to_keep=1)
        logits = res.logits[:, -1].float()  # [R, V]
        if guided:
            c, u = logits[:b], logits[b:]  # [B, V] each
            logits = c + (float(cfg.cfg_scale) - 1.0) * (c - u)  # = u + s (c - u); exactly c when s = 1
        scores = constraint(ids[:b], logits)  # [B, V], -inf outside [lo, hi)
        if cfg.greedy:
            tok = scores.argmax(dim=-1)  # [B]
        else:
            scores = warpers(ids[:b], scores)
            probs = torch.softmax(scores, dim=-1)  # [B, V]
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]
        out = torch.cat([out, tok[:, None]], dim=1)
        step_input = torch.cat([tok, tok], dim=0)[:, None] if guided else tok[:, None]  # [R, 1]
        ids = torch.cat([ids, step_input], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_input)], dim=1)
    return out.cpu()


# --------------------------------------------------------------------------------------------------- results
@dataclass
class GenerationResult:
    """What a generation call returns.

    Attributes:
        task: the task token's name (``"t2v"``, ``"t2i"``, ``"v2a"``, ``"a2v"``, ``"vcont"``, ``"i2v"``).
        sequences: per sample, the full sequence (unpadded prompt + output) of global ids, LongTensor ``[L_i]``.
        output_ids: LongTensor ``[N, n]`` of the generated global ids.
        parsed: per sample, the :class:`~mmtok.sequence.ParsedSequence` (local codes; strict parse, no repairs).
        video: float ``[N, 3, T, H, W]`` in [-1, 1], or ``None`` when the task outputs no video. For ``vcont``
            (and ``i2v``) it is the whole clip: the decoded condition frames followed by the new ones
            (``new_frames_from`` marks where the new frames start).
        audio: float ``[N, 1, S]`` at ``sample_rate``, or ``None``.
        input_index: for each sample, the index of the input (prompt / clip) it was drawn for.
        fps: frame rate of ``video`` (the video tokenizer's).
        sample_rate: sample rate of ``audio``.
        new_frames_from: first frame index of ``video`` that the model generated (0 unless continuing).
    """

    task: str
    sequences: list[torch.Tensor]
    output_ids: torch.Tensor
    parsed: list[ParsedSequence]
    video: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    input_index: list[int] = field(default_factory=list)
    fps: float | None = None
    sample_rate: int | None = None
    new_frames_from: int = 0

    def __len__(self) -> int:
        return int(self.output_ids.shape[0])

    @property
    def image(self) -> torch.Tensor:
        """``[N, 3, H, W]``: the first frame of ``video`` (text-to-image)."""
        if self.video is None:
            raise AttributeError(f"a {self.task} result has no video")
        return self.video[:, :, 0]

    def frames(self, i: int = 0) -> torch.Tensor:
        """Sample ``i``'s video as uint8 frames ``[T, H, W, 3]`` (what ``write_video`` takes)."""
        if self.video is None:
            raise AttributeError(f"a {self.task} result has no video")
        return to_uint8(self.video[i]).contiguous()


# ------------------------------------------------------------------------------------------------- the generator
class MultimodalGenerator:
    """An LM and its tokenizer bundle, with one method per generation task.

    Args:
        model: :class:`lm.MMLMForCausalLM` (any causal LM with the same forward works).
        bundle: :class:`mmtok.multimodal.MultimodalTokenizer` the model was trained with (checked against the
            model's recorded vocabulary layout).
        num_frames: default clip length in frames for video outputs (VideoPoet's and the demo corpus' 17).
        latent_hw: ``(H', W')`` of generated video codes (default: the bundle's ``latent_hw``).
        sampling: default :class:`SamplingConfig`; every method also takes its fields as keywords.

    Every method returns a :class:`GenerationResult`; ``num_samples`` samples are drawn per input, and methods that
    take media accept one clip or a list of clips (batched together).
    """

    def __init__(self, model: Any, bundle: Any, *, num_frames: int = 17, latent_hw: Sequence[int] | None = None,
                 sampling: SamplingConfig | None = None) -> None:
        check = getattr(model, "check_vocabulary", None)
        if callable(check):
            check(bundle)
        elif getattr(model.config, "vocab_size", bundle.vocab.size) < bundle.vocab.size:
            raise GenerationError(f"the model's vocabulary ({model.config.vocab_size} ids) is smaller than the "
                                  f"bundle's ({bundle.vocab.size})")
        self.model = model.eval()
        self.bundle = bundle
        self.vocab = bundle.vocab
        hw = latent_hw if latent_hw is not None else bundle.latent_hw
        self.latent_hw: tuple[int, int] | None = None if hw is None else (int(hw[0]), int(hw[1]))
        self.sampling = (sampling if sampling is not None else SamplingConfig()).validate()
        self.num_frames = int(num_frames)
        if bundle.video is not None:
            self._check_frames(self.num_frames, "num_frames")

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **kwargs: Any) -> "MultimodalGenerator":
        """Load an exported model directory (LM ``config.json`` + ``model.safetensors`` and the tokenizer bundle
        side by side). Raises ``FileNotFoundError`` naming what is missing."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"model directory not found: {d}")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d} holds no config.json: not an exported mmtok model directory "
                                    "(recipes/pretrain.py writes one at the end of training)")
        from mmtok.multimodal import BUNDLE_FILE, MultimodalTokenizer

        if not (d / BUNDLE_FILE).is_file():
            raise FileNotFoundError(f"{d} holds no {BUNDLE_FILE}: the tokenizer bundle must be saved next to the "
                                    "model (MultimodalTokenizer.save_pretrained(dir))")
        import lm  # noqa: F401  (registers the mmlm model type)
        from transformers import AutoModelForCausalLM

        load_kwargs = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(d, **load_kwargs).to(device)
        bundle = MultimodalTokenizer.from_pretrained(d)
        for part in (bundle.video, bundle.audio):
            if part is not None and hasattr(part, "to"):
                part.to(device).eval()
        return cls(model, bundle, **kwargs)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def fps(self) -> float | None:
        """Frame rate of generated video (the video tokenizer's ``config.fps``, else ``frame_rate * factor``)."""
        v = self.bundle.video
        if v is None:
            return None
        fps = getattr(getattr(v, "config", None), "fps", None)
        return float(fps) if fps is not None else float(v.frame_rate) * self._temporal_factor()

    @property
    def sample_rate(self) -> int | None:
        """Sample rate of generated audio (the audio tokenizer's)."""
        a = self.bundle.audio
        return None if a is None else int(a.sample_rate)

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``(H, W)`` in pixels of the video the model reads and writes (``latent_hw`` x the spatial factor)."""
        if self.latent_hw is None or self.bundle.video is None:
            return None
        s = int(getattr(self.bundle.video, "spatial_factor", 1))
        return self.latent_hw[0] * s, self.latent_hw[1] * s

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames ``T'`` of a clip of ``num_frames`` frames (``1 + f k`` frames -> ``1 + k``)."""
        self._check_frames(num_frames, "num_frames")
        return 1 + (int(num_frames) - 1) // self._temporal_factor()

    def pixel_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames: ``1 + f (T' - 1)``."""
        return 1 + self._temporal_factor() * (int(latent_frames) - 1)

    def audio_frames_for(self, num_frames: int) -> int:
        """Audio code frames covering a clip of ``num_frames`` video frames (as the data pipeline cuts audio:
        ``num_frames / fps`` seconds, ``ceil(samples / hop)`` frames)."""
        a = self._need("audio", "size the audio")
        samples = round(int(num_frames) / self.fps * a.sample_rate)
        return int(a.code_frames(samples)) if hasattr(a, "code_frames") else math.ceil(samples * a.frame_rate
                                                                                     / a.sample_rate)

    # ------------------------------------------------------------------------------------------ tasks
    def text_to_video(self, prompt: str | Sequence[str], *, num_frames: int | None = None,
                      sampling: SamplingConfig | None = None, progress: bool | None = None,
                      **kwargs: Any) -> GenerationResult:
        """Generate ``num_frames`` frames (default ``self.num_frames``) for each caption in ``prompt``.

        ``kwargs``: :class:`SamplingConfig` fields (``temperature``, ``top_k``, ``top_p``, ``cfg_scale``,
        ``num_samples``, ``seed``, ``use_cache``).
        """
        texts = self._texts(prompt, required=True)
        frames = self.num_frames if num_frames is None else int(num_frames)
        items = [{"text": t} for t in texts]
        return self.generate_from_codes("t2v", items, video_frames=self.latent_frames(frames),
                                        sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)

    def text_to_image(self, prompt: str | Sequence[str], *, sampling: SamplingConfig | None = None,
                      progress: bool | None = None, **kwargs: Any) -> GenerationResult:
        """Generate one image (one latent frame) per caption; ``result.image`` is ``[N, 3, H, W]``."""
        texts = self._texts(prompt, required=True)
        return self.generate_from_codes("t2i", [{"text": t} for t in texts], video_frames=1,
                                        sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)

    def video_to_audio(self, video: torch.Tensor | Sequence[torch.Tensor], *,
                       text: str | Sequence[str] | None = None, sampling: SamplingConfig | None = None,
                       progress: bool | None = None, **kwargs: Any) -> GenerationResult:
        """Generate the soundtrack of a clip (uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]``; or a list).

        The audio covers the clip's duration (``T / fps`` seconds) and is trimmed to exactly that many samples.
        ``text`` is the optional caption condition (one per clip, or one for all).
        """
        clips = self._clips(video)
        texts = self._texts(text, required=False, count=len(clips))
        codes = [self._encode_video(c) for c in clips]
        lengths = {int(c.shape[0]) for c in codes}
        if len(lengths) > 1:
            raise GenerationError(f"clips of different lengths cannot be batched ({sorted(lengths)} latent frames); "
                                  "call video_to_audio once per length")
        num_frames = int(clips[0].shape[0] if clips[0].dtype == torch.uint8 else clips[0].shape[1])
        items = [{"video": c, **({"text": t} if t is not None else {})} for c, t in zip(codes, texts)]
        result = self.generate_from_codes("v2a", items, audio_frames=self.audio_frames_for(num_frames),
                                          sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)
        samples = round(num_frames / self.fps * self.sample_rate)
        result.audio = result.audio[..., :samples]
        return result

    def audio_to_video(self, audio: torch.Tensor | Sequence[torch.Tensor], *, num_frames: int | None = None,
                       text: str | Sequence[str] | None = None, sampling: SamplingConfig | None = None,
                       progress: bool | None = None, **kwargs: Any) -> GenerationResult:
        """Generate a clip for a mono waveform (float ``[S]`` or ``[1, S]`` at ``sample_rate``; or a list).

        ``num_frames`` defaults to the waveform's duration in frames, rounded to the nearest valid length
        ``1 + f k``.
        """
        waves = self._waves(audio)
        texts = self._texts(text, required=False, count=len(waves))
        lengths = {int(w.numel()) for w in waves}
        if len(lengths) > 1:
            raise GenerationError(f"waveforms of different lengths cannot be batched ({sorted(lengths)} samples)")
        if num_frames is None:
            f = self._temporal_factor()
            raw = waves[0].numel() / self.sample_rate * self.fps
            num_frames = 1 + f * max(0, round((raw - 1) / f))
        codes = [self._encode_audio(w) for w in waves]
        items = [{"audio": c, **({"text": t} if t is not None else {})} for c, t in zip(codes, texts)]
        return self.generate_from_codes("a2v", items, video_frames=self.latent_frames(int(num_frames)),
                                        sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)

    def continue_video(self, video: torch.Tensor | Sequence[torch.Tensor], num_frames: int, *,
                       text: str | Sequence[str] | None = None, sampling: SamplingConfig | None = None,
                       progress: bool | None = None, **kwargs: Any) -> GenerationResult:
        """Continue a clip by ``num_frames`` frames (a multiple of the video tokenizer's temporal factor).

        The input needs ``1 + f k`` frames. ``result.video`` holds the decoded input followed by the new frames
        (``result.new_frames_from`` = the input's frame count).
        """
        clips = self._clips(video)
        texts = self._texts(text, required=False, count=len(clips))
        f = self._temporal_factor()
        if int(num_frames) < 1 or int(num_frames) % f:
            raise GenerationError(f"num_frames must be a positive multiple of the video tokenizer's temporal factor "
                                  f"{f} (each latent frame after the first covers {f} frames), got {num_frames}")
        codes = [self._encode_video(c) for c in clips]
        lengths = {int(c.shape[0]) for c in codes}
        if len(lengths) > 1:
            raise GenerationError(f"clips of different lengths cannot be batched ({sorted(lengths)} latent frames)")
        k = lengths.pop()
        items = [{"video": c, **({"text": t} if t is not None else {})} for c, t in zip(codes, texts)]
        result = self.generate_from_codes("vcont", items, video_frames=k + int(num_frames) // f, cond_frames=k,
                                          sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)
        result.new_frames_from = self.pixel_frames(k)
        return result

    def image_to_video(self, image: torch.Tensor | Sequence[torch.Tensor], *, num_frames: int | None = None,
                       text: str | Sequence[str] | None = None, sampling: SamplingConfig | None = None,
                       progress: bool | None = None, **kwargs: Any) -> GenerationResult:
        """Animate an image (uint8 ``[H, W, 3]`` / ``[1, H, W, 3]`` or float ``[3, H, W]``; or a list) into
        ``num_frames`` frames; ``result.video`` starts with the decoded image."""
        images = image if isinstance(image, (list, tuple)) else [image]
        clips = []
        for im in images:
            if not isinstance(im, torch.Tensor):
                raise GenerationError(f"an image must be a torch.Tensor, got {type(im).__name__}")
            if im.dtype == torch.uint8 and im.dim() == 3:
                im = im[None]  # [1, H, W, 3]
            elif im.dim() == 3 and im.dtype.is_floating_point:
                im = im[:, None]  # [3, 1, H, W]
            clips.append(im)
        codes = [self._encode_video(c) for c in self._clips(clips)]
        texts = self._texts(text, required=False, count=len(codes))
        frames = self.num_frames if num_frames is None else int(num_frames)
        items = [{"video": c[:1], **({"text": t} if t is not None else {})} for c, t in zip(codes, texts)]
        result = self.generate_from_codes("i2v", items, video_frames=self.latent_frames(frames),
                                          sampling=_sampling(sampling or self.sampling, kwargs), progress=progress)
        result.new_frames_from = 1
        return result

    # ------------------------------------------------------------------------------------------ the core
    @torch.no_grad()
    def generate_from_codes(self, task: str, items: Sequence[dict[str, Any]], *, video_frames: int | None = None,
                            audio_frames: int | None = None, cond_frames: int | None = None,
                            sampling: SamplingConfig | None = None, progress: bool | None = None,
                            decode: bool = True) -> GenerationResult:
        """Generate from already-tokenized conditions (what evaluation over token shards uses).

        Args:
            task: ``t2v``, ``t2i``, ``i2v``, ``v2a``, ``a2v`` or ``vcont``.
            items: one dict per input with local codes: ``"text"`` (ids or a string), ``"video"``
                ``[T', H', W']`` (for vcont/i2v only the condition frames), ``"audio"`` ``[n_q, F]``.
            video_frames: ``T'`` of the whole output video (condition frames included for vcont/i2v).
            audio_frames: audio code frames of the output (v2a).
            cond_frames: vcont: latent frames in the condition (default: the given video's).
            sampling: :class:`SamplingConfig` (default: the generator's).
            decode: run the video/audio decoders (``False`` leaves ``video``/``audio`` as ``None``).
        """
        if task not in GENERATION_TASKS:
            outputs = TASKS[task].output if task in TASKS else None
            raise GenerationError(f"task {task!r} cannot be generated here (expected one of "
                                  f"{', '.join(GENERATION_TASKS)})" + (f"; it outputs {'/'.join(outputs)}"
                                                                        if outputs else ""))
        if not items:
            raise GenerationError("nothing to generate: no inputs given")
        cfg = (sampling if sampling is not None else self.sampling).validate()
        layout = TASKS[task]
        if any(k in ("video", "image") for k in layout.output) or "video" in layout.condition:
            self._need("video", f"run {task}")
            if self.latent_hw is None:
                raise GenerationError("the video latent size is unknown: the bundle records no latent_hw; pass "
                                      "latent_hw=(H', W') to MultimodalGenerator")
        if "audio" in layout.output or "audio" in layout.condition:
            self._need("audio", f"run {task}")
        if task == "vcont" and cond_frames is None:
            cond_frames = int(items[0]["video"].shape[0])
        prompts, uncond = [], []
        for item in items:
            kw = self._prompt_kwargs(item)
            prompts.append(self.bundle.build_prompt(task, cond_frames=cond_frames, **kw))
            if cfg.cfg_scale is not None:
                uncond.append(self.bundle.build_prompt(task, cond_frames=cond_frames, unconditional=True, **kw))
        try:
            constraints = output_constraints(task, self.vocab, latent_hw=self.latent_hw or (1, 1),
                                             video_frames=video_frames, audio_frames=audio_frames,
                                             cond_frames=cond_frames, audio_pattern=self.bundle.audio_pattern,
                                             num_audio_levels=self.bundle.num_audio_levels)
        except ValueError as e:
            raise GenerationError(f"cannot size the {task} output: {e}") from e
        out = sample_tokens(self.model, prompts, constraints, uncond_prompts=uncond or None, sampling=cfg,
                            pad_id=self.vocab.pad_id, progress=progress, description=task)  # [N, n]
        ns = int(cfg.num_samples)
        index = [i for i in range(len(prompts)) for _ in range(ns)]
        sequences = [torch.cat([prompts[i], out[j]]) for j, i in enumerate(index)]
        parsed = [self.bundle.parse(seq, task=task, video_frames=video_frames, audio_frames=audio_frames,
                                    cond_frames=cond_frames if task == "vcont" else None, latent_hw=self.latent_hw)
                  for seq in sequences]
        result = GenerationResult(task=task, sequences=sequences, output_ids=out, parsed=parsed, input_index=index,
                                  fps=self.fps, sample_rate=self.sample_rate)
        if decode:
            self._decode(result)
        return result

    # ------------------------------------------------------------------------------------------ helpers
    def _decode(self, result: GenerationResult) -> None:
        """Decode the output modality of every sample (batched through the tokenizers)."""
        task = result.task
        if task in ("t2v", "t2i", "a2v", "vcont", "i2v"):
            if task in ("vcont", "i2v"):
                codes = torch.stack([p.video for p in result.parsed])  # [N, T', H', W'], condition + new
            else:
                key = "image" if task == "t2i" else "video"
                codes = torch.stack([p.output[key] for p in result.parsed])  # [N, T', H', W']
            video = self.bundle.video.decode(codes.to(self._device(self.bundle.video)))
            result.video = torch.as_tensor(video).float().cpu()  # [N, 3, T, H, W]
        if task == "v2a":
            codes = torch.stack([p.output["audio"] for p in result.parsed])  # [N, L, F]
            audio = torch.as_tensor(self.bundle.audio.decode(codes.to(self._device(self.bundle.audio))))
            result.audio = audio.float().reshape(codes.shape[0], 1, -1).cpu()  # [N, 1, S]

    def _prompt_kwargs(self, item: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        unknown = set(item) - {"text", "video", "audio"}
        if unknown:
            raise GenerationError(f"unknown condition keys {sorted(unknown)}; expected text, video, audio")
        if item.get("text") is not None:
            t = item["text"]
            kw["text"] = self._need("text", "encode the caption").encode(t) if isinstance(t, str) else t
        for key in ("video", "audio"):
            if item.get(key) is not None:
                kw[key] = torch.as_tensor(item[key]).long()
        return kw

    def _need(self, part: str, why: str) -> Any:
        tok = getattr(self.bundle, part)
        if tok is None:
            raise GenerationError(f"this model's tokenizer bundle has no {part} tokenizer, needed to {why}")
        return tok

    def _temporal_factor(self) -> int:
        v = self._need("video", "size video")
        return int(getattr(v, "temporal_factor", 1))

    def _check_frames(self, num_frames: int, what: str) -> None:
        f = self._temporal_factor()
        if int(num_frames) < 1 or (int(num_frames) - 1) % f:
            raise GenerationError(f"{what} must be 1 + {f}k (1, {1 + f}, {1 + 2 * f}, ...) for this video "
                                  f"tokenizer, got {num_frames}")

    @staticmethod
    def _device(module: Any) -> torch.device:
        try:
            return next(module.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    def _texts(self, text: Any, *, required: bool, count: int | None = None) -> list[Any]:
        if text is None:
            if required:
                raise GenerationError("a text prompt is required")
            return [None] * (count or 1)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise GenerationError("no prompts given")
        for t in texts:
            if not isinstance(t, str):
                raise GenerationError(f"prompts must be strings, got {type(t).__name__}")
            if required and not t.strip():
                raise GenerationError("the text prompt is empty")
        if count is not None and len(texts) != count:
            if len(texts) == 1:
                return texts * count
            raise GenerationError(f"{len(texts)} captions for {count} inputs: give one per input or one for all")
        return texts

    def _clips(self, video: Any) -> list[torch.Tensor]:
        clips = list(video) if isinstance(video, (list, tuple)) else [video]
        if not clips:
            raise GenerationError("no video given")
        out = []
        for c in clips:
            if not isinstance(c, torch.Tensor):
                try:
                    import numpy as np

                    if isinstance(c, np.ndarray):
                        c = torch.from_numpy(c)
                except ImportError:  # pragma: no cover
                    pass
            if not isinstance(c, torch.Tensor):
                raise GenerationError(f"a video must be a tensor, got {type(c).__name__}")
            ok = (c.dtype == torch.uint8 and c.dim() == 4 and c.shape[-1] == 3) or \
                 (c.dtype.is_floating_point and c.dim() == 4 and c.shape[0] == 3)
            if not ok:
                raise GenerationError(f"a video must be one clip, uint8 [T, H, W, 3] or float [3, T, H, W] in "
                                      f"[-1, 1]; got shape {tuple(c.shape)} {c.dtype}")
            out.append(c)
        return out

    def _encode_video(self, clip: torch.Tensor) -> torch.Tensor:
        """One clip -> local codes ``[T', H', W']``, checked against the size the model was trained on."""
        tok = self._need("video", "read the video")
        t = int(clip.shape[0] if clip.dtype == torch.uint8 else clip.shape[1])
        h, w = (clip.shape[1], clip.shape[2]) if clip.dtype == torch.uint8 else (clip.shape[2], clip.shape[3])
        self._check_frames(t, "the clip's frame count")
        if self.frame_size is not None and (int(h), int(w)) != self.frame_size:
            raise GenerationError(f"the model reads {self.frame_size[0]}x{self.frame_size[1]} video (latent "
                                  f"{self.latent_hw[0]}x{self.latent_hw[1]}), got {h}x{w} frames: resize/crop the "
                                  "clip first (read_video(..., size=...))")
        try:
            codes = torch.as_tensor(tok.encode(clip.unsqueeze(0).to(self._device(tok))))
        except (ValueError, TypeError) as e:
            raise GenerationError(f"the video tokenizer cannot take this clip: {e}") from e
        return codes[0].long().cpu()  # [T', H', W']

    def _waves(self, audio: Any) -> list[torch.Tensor]:
        waves = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not waves:
            raise GenerationError("no audio given")
        out = []
        for w in waves:
            if not isinstance(w, torch.Tensor):
                try:
                    w = torch.as_tensor(w)
                except (TypeError, ValueError, RuntimeError):
                    raise GenerationError(f"audio must be a float waveform, got {type(w).__name__}") from None
            if not w.dtype.is_floating_point or w.dim() not in (1, 2) or (w.dim() == 2 and w.shape[0] != 1):
                raise GenerationError(f"audio must be one mono float waveform [S] or [1, S] at "
                                      f"{self.sample_rate} Hz; got shape {tuple(w.shape)} {w.dtype}")
            if w.numel() == 0:
                raise GenerationError("the waveform is empty")
            out.append(w.reshape(-1).float())
        return out

    def _encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        tok = self._need("audio", "read the audio")
        try:
            codes = torch.as_tensor(tok.encode(wave.reshape(1, 1, -1).to(self._device(tok))))
        except (ValueError, TypeError) as e:
            raise GenerationError(f"the audio tokenizer cannot take this waveform: {e}") from e
        return codes[0].long().cpu()  # [n_q, F]

