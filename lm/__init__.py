"""The mmtok token LM and VATT (importing :mod:`lm` registers both with AutoConfig / AutoModel, the LM with
AutoModelForCausalLM too: ``model_type`` ``"mmlm"`` and ``"mmtok_vatt"``).

>>> from lm import MMLMConfig, MMLMForCausalLM, VATTModel
>>> model = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab_size=512))
>>> vatt = VATTModel.from_preset("debug")
"""

from lm.configuration_mmlm import PRESETS, MMLMConfig, VocabularyMismatchError, vocabulary_layout
from lm.modeling_mmlm import (
    MMLMCausalLMOutput,
    MMLMForCausalLM,
    MMLMModel,
    MMLMPreTrainedModel,
    prefix_lm_mask,
    prefix_lm_overlay,
)
from lm.configuration_vatt import VATTConfig
from lm.modeling_vatt import VATTModel, VATTOutput

__all__ = [
    "PRESETS",
    "MMLMCausalLMOutput",
    "MMLMConfig",
    "MMLMForCausalLM",
    "MMLMModel",
    "MMLMPreTrainedModel",
    "VATTConfig",
    "VATTModel",
    "VATTOutput",
    "VocabularyMismatchError",
    "prefix_lm_mask",
    "prefix_lm_overlay",
    "vocabulary_layout",
]
