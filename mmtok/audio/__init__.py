"""The audio tokenizer: a SoundStream/EnCodec-style causal conv codec with residual VQ, or the same quantizer between
an STFT-frame encoder and a Vocos-style inverse-STFT decoder (``architecture="spectral"``, :mod:`.spectral`), plus a
bridge to pretrained EnCodec weights (``transformers.EncodecModel``).

Importing this package registers ``AudioTokenizerConfig`` / ``AudioTokenizer`` with ``AutoConfig`` / ``AutoModel``
(``model_type = "mmtok_audio"``). :func:`load_audio_tokenizer` loads either kind from a directory.
"""

from mmtok.audio.configuration_audio import PRESETS, AudioTokenizerConfig
from mmtok.audio.modeling_audio import (
    AudioStreamDecoder,
    AudioStreamEncoder,
    AudioTokenizer,
    AudioTokenizerOutput,
)
from mmtok.audio.encodec_bridge import EncodecAudioTokenizer, load_audio_tokenizer

__all__ = [
    "PRESETS",
    "AudioStreamDecoder",
    "AudioStreamEncoder",
    "AudioTokenizer",
    "AudioTokenizerConfig",
    "AudioTokenizerOutput",
    "EncodecAudioTokenizer",
    "load_audio_tokenizer",
]
