"""Quantizers: each stands alone in its own file and shares one contract.

``forward(z)`` on channel-last ``[..., dim]`` returns :class:`QuantizerOutput` ``(quantized, indices, loss,
metrics)`` with a straight-through gradient; ``indices_to_codes(indices)`` is its exact inverse; every quantizer has
``codebook_size`` and a keyword-only constructor whose names follow vector-quantize-pytorch where the concept is the
same.

=================  =========================================  ===================================
quantizer          codebook                                   paper
=================  =========================================  ===================================
``LFQ``            ``2^d`` signs, lookup-free (BSQ: spherical)  MAGVIT-v2, arXiv 2310.05737
``FSQ``            product grid of per-dimension levels       arXiv 2309.15505
``VectorQuantizer`` learned, EMA or gradient                  VQ-VAE, arXiv 1711.00937
``ResidualVQ``     N stages of VectorQuantizer                SoundStream, arXiv 2107.03312
=================  =========================================  ===================================
"""

from mmtok.quantizers.common import QuantizerOutput
from mmtok.quantizers.fsq import FSQ
from mmtok.quantizers.lfq import LFQ
from mmtok.quantizers.residual_vq import ResidualVQ
from mmtok.quantizers.vq import VectorQuantizer

__all__ = ["FSQ", "LFQ", "QuantizerOutput", "ResidualVQ", "VectorQuantizer"]
