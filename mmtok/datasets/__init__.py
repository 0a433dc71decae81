"""Datasets that come with knowledge of their content: each a package holding its generator, the probes that read
its content back out of media and its scoring.

* :mod:`mmtok.datasets.moving_digits` - Moving-Digits, the embedded synthetic audio-visual corpus behind
  ``make demo`` and the tests.
* :mod:`mmtok.datasets.real_media` - real footage, speech and music from Debian packages (a catalogue with
  licences), cut into clips with a manifest split by source; ``data/real_media.py`` is its command line.

The library proper (tokenizers, quantizers, vocabulary, sequences, the data pipeline in :mod:`mmtok.data`, and the LM
in ``lm``) knows nothing of any of them, and nothing here imports ``lm``. Nothing is imported here: ``import mmtok``
does not load a dataset (nor its optional dependencies, the ``demo`` extra).
"""
