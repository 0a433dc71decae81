"""Configuration of VATT, the video-audio-text transformer (``model_type = "mmtok_vatt"``).

VATT (Akbari et al., arXiv 2104.11178) trains three transformers on raw signals (video tubelets, waveform patches,
text ids) contrastively: NCE between video and audio in a video-audio space, MIL-NCE between video and captions in
a video-text space, DropToken dropping a random half of the video and audio tokens in training. Its other variant,
VATT-MA, shares one modality-agnostic backbone between the three modalities (each keeps its own tokenizer and
projections). Here each tower is a :class:`mmtok.encoders.PatchEncoderModel`, so the video tower carries the token
reduction switches (RLT, ToMe / VTM, STTS) of its :class:`~mmtok.encoders.PatchEncoderConfig`.

Presets (:meth:`VATTConfig.from_preset`):

=========  ===================  ===================  ===================  ======  ======  =====================
preset     video tower          audio tower          text tower           va_dim  vt_dim  use
=========  ===================  ===================  ===================  ======  ======  =====================
``debug``  32 wide, 2 layers    32 wide, 2 layers    32 wide, 2 layers        32      16  unit tests (seconds)
``demo``   128 wide, 4 layers,  128 wide, 2 layers,  128 wide, 2 layers      128      64  the Moving-Digits demo
           2x8x8 px tubelets    500-sample patches   (SentencePiece ids)                  corpus on 2 CPU cores
=========  ===================  ===================  ===================  ======  ======  =====================

The paper's sizes (video 1024-d / 24 layers at its largest, audio and text 768-d, va 512-d, vt 256-d) are a config
away (``from_preset("demo", video_config={"preset": "base"}, ...)``); none of them was trained here.
"""

from __future__ import annotations

from typing import Any, Mapping

from transformers import PretrainedConfig

from lm.configuration_alignment import AlignmentConfig
from mmtok.encoders import PatchEncoderConfig

__all__ = ["PRESETS", "TOWERS", "TRANSFORMER_FIELDS", "VATTConfig"]

TOWERS = ("video", "audio", "text")

# What makes a tower's transformer (as opposed to its tokenizer): the fields a shared backbone takes from the video
# tower's config.
TRANSFORMER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "layer_norm_eps",
                      "qkv_bias", "initializer_range", "attention", "packed_attention")

# Token-reduction switches of a PatchEncoderConfig (all off by default).
REDUCTION_DEFAULTS = {"rlt_threshold": None, "tome_r": 0, "stts_frames": None, "stts_regions": None}

PRESETS: dict[str, dict[str, Any]] = {
    # 1 s of 16 kHz audio in 500-sample patches is 32 tokens; the debug corpus clips are 8 frames of 32x32
    "debug": dict(video_config=dict(preset="debug"),
                  audio_config=dict(preset="debug", audio_patch_size=500, max_sequence_length=64),
                  text_config=dict(preset="debug", max_sequence_length=64),
                  va_dim=32, vt_dim=16),
    # The demo corpus: 5 frames of 32x32 at 4 fps (1.25 s, 40 audio tokens of 500 samples: the demo audio codec's
    # frames). 8x8-pixel patches are the glyph grid the corpus draws on (position_grid 8), so static background is
    # whole tubelets that RLT can drop; 4x4 patches would make 4x the tokens and a step 4x as long on 2 cores.
    # Tubelets span 2 frames (ViViT), the first frame repeated in front (MAGVIT-v2's 1 + 2k layout): 3x4x4 = 48
    # tokens a clip, each seeing the glyph move, so the joint-attention tower reads the direction of motion (89% by
    # linear probe at 3,000 steps, where one-frame tubelets, 80 tokens, read 48%: docs/what_was_tried.md). Audio and
    # text need less depth than video (VATT's audio and text towers are smaller than its video tower too).
    "demo": dict(video_config=dict(preset="demo", patch_size=8, tubelet_size=2, tubelet_padding="first_frame",
                                   max_grid=[16, 8, 8]),
                 audio_config=dict(preset="demo", num_hidden_layers=2, max_sequence_length=128),
                 text_config=dict(preset="demo", num_hidden_layers=2, max_sequence_length=64, vocab_size=256),
                 va_dim=128, vt_dim=64),
}


def _tower_config(value: PatchEncoderConfig | Mapping[str, Any] | None, modality: str) -> PatchEncoderConfig:
    """A tower's :class:`PatchEncoderConfig` from itself, a dict of its fields (a ``preset`` key applies that preset
    under the other keys), or ``None`` (the defaults)."""
    if isinstance(value, PatchEncoderConfig):
        config = value
    elif value is None or isinstance(value, Mapping):
        fields = dict(value or {})
        given = fields.pop("modality", modality)
        if given != modality:
            raise ValueError(f"{modality}_config must describe a {modality} encoder, got modality={given!r}")
        for key in ("model_type", "transformers_version", "architectures"):  # what to_dict adds
            fields.pop(key, None)
        preset = fields.pop("preset", None)
        config = (PatchEncoderConfig.from_preset(preset, modality=modality, **fields) if preset is not None
                  else PatchEncoderConfig(modality=modality, **fields))
    else:
        raise TypeError(f"{modality}_config must be a PatchEncoderConfig or a dict of its fields, got "
                        f"{type(value).__name__}")
    if config.modality != modality:
        raise ValueError(f"{modality}_config must describe a {modality} encoder, got modality={config.modality!r}")
    return config


class VATTConfig(PretrainedConfig):
    r"""Configuration of :class:`~lm.modeling_vatt.VATTModel`.

    Args:
        video_config, audio_config, text_config: each tower's :class:`~mmtok.encoders.PatchEncoderConfig`, or a dict
            of its fields (a ``"preset"`` key starts from that encoder preset, e.g. ``{"preset": "demo",
            "tome_r": 4}``); ``None`` takes the encoder's defaults. The video tower's token-reduction switches
            (``rlt_threshold``, ``tome_r``, ``merge``, ``stts_*``) are read at every forward, so
            ``model.config.video_config.tome_r = 8`` changes a built model (see
            :meth:`~lm.modeling_vatt.VATTModel.from_pretrained` for the switches that add weights).
        shared_backbone: VATT-MA: one modality-agnostic transformer for all three modalities (each keeps its own
            embeddings and projections). Its transformer is the video tower's: the audio and text configs take the
            video config's :data:`TRANSFORMER_FIELDS` (overwritten here, so a saved config says what runs), and their
            token-reduction switches must be off (the backbone's switches are the video's). Needs joint attention.
        droptoken: DropToken (VATT Sec. 3.1): the fraction of each video and audio clip's tokens dropped at random
            (after the embeddings, before the transformer) in training; 0 disables it. VATT: 0.5. Not with divided
            attention or STTS in training (both need the full tubelet grid).
        va_dim: width of the video-audio space (VATT: 512).
        vt_dim: width of the video-text space (VATT: 256).
        init_temperature: initial temperature tau of the NCE / MIL-NCE logits (``cos / tau``; named so that
            transformers does not take it for a sampling setting).
        learn_temperature: learn ``log(1 / tau)``, clamped to ``max_logit_scale``.
        max_logit_scale: upper bound of ``1 / tau``.
        va_weight, vt_weight: weights of the video-audio NCE and the video-text MIL-NCE in the loss.
        projection_std: std of the normal init of the projections' weights; ``None`` (default): ``1 / sqrt(fan_in)``
            per layer (see :meth:`lm.modeling_alignment.ContrastiveProjections._init_weights` for why).
        initializer_range: std of the normal init of the embeddings the model holds outside its towers (the shared
            backbone's audio and text embeddings; each tower inits itself with its own config's).
        preset: the preset this config was built from (informative only).
    """

    model_type = "mmtok_vatt"

    def __init__(
        self,
        video_config: PatchEncoderConfig | Mapping[str, Any] | None = None,
        audio_config: PatchEncoderConfig | Mapping[str, Any] | None = None,
        text_config: PatchEncoderConfig | Mapping[str, Any] | None = None,
        shared_backbone: bool = False,
        droptoken: float = 0.5,
        va_dim: int = 512,
        vt_dim: int = 256,
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        va_weight: float = 1.0,
        vt_weight: float = 1.0,
        projection_std: float | None = None,
        initializer_range: float = 0.02,
        preset: str | None = None,
        **kwargs: Any,
    ):
        self.video_config = _tower_config(video_config, "video")
        self.audio_config = _tower_config(audio_config, "audio")
        self.text_config = _tower_config(text_config, "text")
        self.shared_backbone = bool(shared_backbone)
        self.droptoken = float(droptoken)
        self.va_dim = int(va_dim)
        self.vt_dim = int(vt_dim)
        self.init_temperature = float(init_temperature)
        self.learn_temperature = bool(learn_temperature)
        self.max_logit_scale = float(max_logit_scale)
        self.va_weight = float(va_weight)
        self.vt_weight = float(vt_weight)
        self.projection_std = projection_std
        self.initializer_range = initializer_range
        self.preset = preset
        super().__init__(**kwargs)
        if self.shared_backbone:
            if self.video_config.attention != "joint":   # checked before the audio / text towers copy it
                raise ValueError("a shared backbone runs audio and text tokens too, which have no tubelet grid for "
                                 "divided attention: use attention='joint'")
            for tower in (self.audio_config, self.text_config):
                for name in TRANSFORMER_FIELDS:
                    setattr(tower, name, getattr(self.video_config, name))
        self.validate()

    def tower_config(self, modality: str) -> PatchEncoderConfig:
        """The :class:`PatchEncoderConfig` of the ``"video"``, ``"audio"`` or ``"text"`` tower."""
        if modality not in TOWERS:
            raise ValueError(f"modality must be one of {TOWERS}, got {modality!r}")
        return getattr(self, f"{modality}_config")

    def alignment_config(self) -> AlignmentConfig:
        """The projection and loss settings as an :class:`~lm.configuration_alignment.AlignmentConfig` (the LM's
        alignment head reads the same fields; its pooling and segment settings do not apply here)."""
        return AlignmentConfig(va_dim=self.va_dim, vt_dim=self.vt_dim, droptoken=self.droptoken,
                               temperature=self.init_temperature, learn_temperature=self.learn_temperature,
                               max_logit_scale=self.max_logit_scale, va_weight=self.va_weight,
                               vt_weight=self.vt_weight)

    def validate(self) -> None:
        """Raise ``ValueError`` for a value or combination that cannot train (the towers validate their own)."""
        self.alignment_config()  # range checks of va_dim, vt_dim, droptoken, temperature, weights
        for modality in TOWERS:
            self.tower_config(modality).validate()
        video = self.video_config
        if self.droptoken > 0 and video.attention == "divided":
            raise ValueError("DropToken leaves each clip a random subset of its tubelets, but divided attention needs "
                             "the full T' x H' x W' grid: set droptoken=0 or use attention='joint'")
        if self.shared_backbone:  # (joint attention: checked in __init__, and by the towers' own validation)
            for modality in ("audio", "text"):
                tower = self.tower_config(modality)
                on = [name for name, off in REDUCTION_DEFAULTS.items() if getattr(tower, name) != off]
                if on:
                    raise ValueError(f"with a shared backbone the token-reduction switches are the video tower's; "
                                     f"{modality}_config sets {on}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VATTConfig":
        """A named size (``debug``, ``demo``). A tower override given as a dict is merged into the preset's tower
        (``from_preset("demo", video_config={"tome_r": 4})`` keeps the rest of the demo video tower)."""
        if name not in PRESETS:
            raise ValueError(f"unknown VATT preset {name!r}; available: {sorted(PRESETS)}")
        kwargs: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[name].items()}
        for key, value in overrides.items():
            if key.endswith("_config") and isinstance(value, Mapping) and "preset" not in value:
                kwargs[key] = {**kwargs.get(key, {}), **value}
            else:
                kwargs[key] = value
        return cls(**kwargs, preset=name)
