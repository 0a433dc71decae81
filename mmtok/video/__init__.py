"""The video tokenizer: MAGVIT-v2-style causal 3D CNN with lookup-free quantization.

Importing this package registers ``VideoTokenizerConfig`` / ``VideoTokenizer`` with ``AutoConfig`` / ``AutoModel``
(``model_type = "mmtok_video"``).
"""

from mmtok.video.configuration_video import PRESETS, VideoTokenizerConfig
from mmtok.video.modeling_video import VideoTokenizer, VideoTokenizerOutput

__all__ = ["PRESETS", "VideoTokenizer", "VideoTokenizerConfig", "VideoTokenizerOutput"]
