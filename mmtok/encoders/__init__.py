"""Continuous patch-token encoders over raw signals, and the methods that cut their token count.

The other paradigm beside mmtok's discrete tokenizers: video tubelets (ViViT), audio waveform patches (VATT) and text
ids become continuous tokens for a transformer with joint or divided space-time attention (TimeSformer). Token
reduction methods are switches of the same config, alone or together:

- RLT, run-length tokenization (:mod:`mmtok.encoders.rlt`): static tubelets dropped before the encoder;
- ToMe and VTM, token merging (:mod:`mmtok.encoders.token_merging`): ``r`` tokens merged per block;
- STTS, spatio-temporal token selection (:mod:`mmtok.encoders.token_selection`): top frames, then top regions.

Clips keeping different numbers of tokens are packed (:mod:`mmtok.encoders.packing`), never padded, and attention
never crosses clips.

>>> from mmtok.encoders import PatchEncoderConfig, PatchEncoderModel
>>> encoder = PatchEncoderModel(PatchEncoderConfig.from_preset("debug", modality="video", tome_r=2))

Importing this package registers ``PatchEncoderConfig`` / ``PatchEncoderModel`` with ``AutoConfig`` / ``AutoModel``
(``model_type = "mmtok_patch_encoder"``).
"""

from mmtok.encoders.configuration_encoder import PRESETS, PatchEncoderConfig
from mmtok.encoders.embeddings import Embedded, build_embeddings
from mmtok.encoders.modeling_encoder import PatchEncoderModel, PatchEncoderOutput
from mmtok.encoders.packing import Packing, packed_attention
from mmtok.encoders.rlt import rlt_keep_mask, run_lengths
from mmtok.encoders.token_merging import merge_tokens
from mmtok.encoders.token_selection import hard_topk, perturbed_topk

__all__ = ["PRESETS", "Embedded", "Packing", "PatchEncoderConfig", "PatchEncoderModel", "PatchEncoderOutput",
           "build_embeddings", "hard_topk", "merge_tokens", "packed_attention", "perturbed_topk", "rlt_keep_mask",
           "run_lengths"]
