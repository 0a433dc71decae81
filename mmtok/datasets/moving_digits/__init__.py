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

from mmtok.datasets.moving_digits.corpus import (
    COLORS,
    DIGIT_WORDS,
    DIRECTIONS,
    GROUND_TRUTH_FIELDS,
    HELD_OUT_TEMPLATES,
    MANIFEST_FIELDS,
    PARTIAL_TEMPLATES,
    TONE_HZ,
    ClipSpec,
    CorpusConfig,
    default_glyph_size,
    digit_frequency,
    generate_corpus,
    held_out_caption,
    load_ground_truth,
    make_captions,
    make_partial_captions,
    render_audio,
    render_frames,
    sample_clip_specs,
    typical_glyphs,
)
from mmtok.datasets.moving_digits.evaluation import (
    LabeledClip,
    copy_last_frame,
    corpus_settings,
    digit_labels,
    digit_prompts,
    load_clips,
    make_probe,
    score_continuation,
    score_t2v,
    score_v2a,
    tokenizer_reconstruction,
    trajectory_error,
)
from mmtok.datasets.moving_digits.probes import (
    AudioReading,
    MovingDigitsProbe,
    VideoReading,
    centroid_track,
    click_f1,
    glyph_features,
    ink_mask,
    read_clicks,
    read_color,
    read_direction,
    read_pitch,
)

__all__ = [
    # corpus
    "COLORS",
    "DIGIT_WORDS",
    "DIRECTIONS",
    "GROUND_TRUTH_FIELDS",
    "HELD_OUT_TEMPLATES",
    "MANIFEST_FIELDS",
    "PARTIAL_TEMPLATES",
    "TONE_HZ",
    "ClipSpec",
    "CorpusConfig",
    "default_glyph_size",
    "digit_frequency",
    "generate_corpus",
    "held_out_caption",
    "load_ground_truth",
    "make_captions",
    "make_partial_captions",
    "render_audio",
    "render_frames",
    "sample_clip_specs",
    "typical_glyphs",
    # probes
    "AudioReading",
    "MovingDigitsProbe",
    "VideoReading",
    "centroid_track",
    "click_f1",
    "glyph_features",
    "ink_mask",
    "read_clicks",
    "read_color",
    "read_direction",
    "read_pitch",
    # evaluation
    "LabeledClip",
    "copy_last_frame",
    "corpus_settings",
    "digit_labels",
    "digit_prompts",
    "load_clips",
    "make_probe",
    "score_continuation",
    "score_t2v",
    "score_v2a",
    "tokenizer_reconstruction",
    "trajectory_error",
]
