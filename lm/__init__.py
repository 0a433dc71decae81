"""The mmtok token LM (importing :mod:`lm` registers it with AutoConfig / AutoModel / AutoModelForCausalLM).

>>> from lm import MMLMConfig, MMLMForCausalLM
>>> model = MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab_size=512))
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

__all__ = [
    "PRESETS",
    "MMLMCausalLMOutput",
    "MMLMConfig",
    "MMLMForCausalLM",
    "MMLMModel",
    "MMLMPreTrainedModel",
    "VocabularyMismatchError",
    "prefix_lm_mask",
    "prefix_lm_overlay",
    "vocabulary_layout",
]
