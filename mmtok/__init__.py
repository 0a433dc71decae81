"""mmtok: video, audio and text tokenizers that share one token language.

Importing :mod:`mmtok` registers its ``transformers`` model classes with the Auto* factories.
"""

from mmtok.interface import CodeSpec, ModalityTokenizer, code_spec

__version__ = "0.1.0"

__all__ = ["CodeSpec", "ModalityTokenizer", "code_spec", "__version__"]
