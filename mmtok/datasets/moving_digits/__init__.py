"""Moving-Digits: everything the project knows of its embedded synthetic corpus, in one package.

Coloured digit glyphs moving in 8 directions and bouncing off the frame edges, with a tone whose pitch names the
digit, struck again at every bounce.

* :mod:`~mmtok.datasets.moving_digits.corpus` - the generator (:func:`generate_corpus`, :class:`CorpusConfig`, the
  palette, directions, captions, tones) and :func:`load_ground_truth`; ``data/moving_digits.py`` is its command line.
* :mod:`~mmtok.datasets.moving_digits.probes` - :class:`MovingDigitsProbe` and the readers it is built of: digit,
  colour, direction, pitch and clicks read back out of media.
* :mod:`~mmtok.datasets.moving_digits.evaluation` - the dataset's scoring: labeled clips (:func:`load_clips`), the
  probe-based t2v / v2a / continuation / tokenizer-reconstruction metrics beside their baselines, and the labels and
  class prompts of zero-shot digit classification (:func:`digit_labels`, :func:`digit_prompts`).

The public names of the three modules are re-exported here. Needs the ``demo`` extra (scikit-learn, SciPy) to draw
glyphs and train the probe's classifier; both are imported on first use.
"""

from mmtok.datasets.moving_digits import corpus, evaluation, probes
from mmtok.datasets.moving_digits.corpus import *  # noqa: F401,F403  (each module's __all__ is its public API)
from mmtok.datasets.moving_digits.evaluation import *  # noqa: F401,F403
from mmtok.datasets.moving_digits.probes import *  # noqa: F401,F403

__all__ = [*corpus.__all__, *probes.__all__, *evaluation.__all__]
