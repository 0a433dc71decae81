"""mmtok: video, audio and text tokenizers that share one token language.

The public API::

    from mmtok import VideoTokenizer, AudioTokenizer, TextTokenizer, UnifiedVocabulary, MultimodalTokenizer
    from mmtok.quantizers import FSQ, LFQ, VectorQuantizer, ResidualVQ

Importing :mod:`mmtok` registers the video and audio tokenizers and the continuous patch encoder
(:mod:`mmtok.encoders`) with ``transformers``' ``AutoConfig`` / ``AutoModel`` (``model_type`` ``"mmtok_video"``,
``"mmtok_audio"`` and ``"mmtok_patch_encoder"``), so ``AutoModel.from_pretrained(dir)`` loads a saved one.
"""

from mmtok.interface import CodeSpec, ModalityTokenizer, code_spec

__version__ = "0.1.0"

# Registration happens on import of these packages (below the interface: they import it).
from mmtok import audio as _audio  # noqa: E402,F401
from mmtok import encoders as _encoders  # noqa: E402,F401
from mmtok import video as _video  # noqa: E402,F401
from mmtok.audio import AudioTokenizer  # noqa: E402
from mmtok.multimodal import MultimodalTokenizer  # noqa: E402
from mmtok.text import TextTokenizer  # noqa: E402
from mmtok.video import VideoTokenizer  # noqa: E402
from mmtok.vocab import UnifiedVocabulary  # noqa: E402

__all__ = ["AudioTokenizer", "CodeSpec", "ModalityTokenizer", "MultimodalTokenizer", "TextTokenizer",
           "UnifiedVocabulary", "VideoTokenizer", "code_spec", "__version__"]
