"""Task sequences: layouts, masks, CFG dropout, audio flattening, parse round trips, errors and repair."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.interface import CodeSpec
from mmtok.sequence import (AUDIO_PATTERNS, TASKS, SequenceError, build_example, build_prompt, flatten_audio,
                            output_constraints, parse_sequence, unflatten_audio)
from mmtok.vocab import BOUNDARY_TOKENS, UnifiedVocabulary

TEXT, VIDEO, AUDIO_CB, AUDIO_Q, LEVELS = 50, 64, 16, 6, 4


@pytest.fixture(scope="module")
def vocab() -> UnifiedVocabulary:
    return UnifiedVocabulary(text=CodeSpec("text", TEXT), video=CodeSpec("video", VIDEO),
                             audio=CodeSpec("audio", AUDIO_CB, AUDIO_Q), num_audio_levels=LEVELS)


def names(vocab, ids) -> list[str]:
    return [vocab.token_name(i) for i in ids]


def inputs_for(task, text, video, audio, with_optional_text=False):
    layout = TASKS[task]
    kw = {}
    if "text" in layout.needs:
        kw["text"] = text
    elif layout.optional_text and with_optional_text:
        kw.update(text=text, text_condition=True)
    kw["video"] = video
    if "audio" in layout.needs:
        kw["audio"] = audio
    return kw


def test_t2v_and_v2a_layouts_match_the_issue(vocab):
    video = torch.tensor([[[1, 2]], [[3, 4]]])  # [T'=2, H'=1, W'=2]
    ex = build_example("t2v", vocab, text=[7, 8], video=video)
    assert names(vocab, ex.input_ids) == ["<bos>", "<t2v>", "<bot>", "text:7", "text:8", "<eot>", "<bov>",
                                          "video:1", "video:2", "video:3", "video:4", "<eov>", "<eos>"]
    assert ex.prefix_len == 7 and ex.input_ids.dtype == torch.long and ex.input_ids.dim() == 1
    audio = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8], [9, 9], [9, 9]])  # [n_q=6, frames=2]; 4 levels kept
    ex = build_example("v2a", vocab, video=video[:1], audio=audio)
    assert names(vocab, ex.input_ids) == [
        "<bos>", "<v2a>", "<bov>", "video:1", "video:2", "<eov>", "<boa>",
        "audio[0]:1", "audio[1]:3", "audio[2]:5", "audio[3]:7", "audio[0]:2", "audio[1]:4", "audio[2]:6",
        "audio[3]:8", "<eoa>", "<eos>"]
    ex = build_example("v2a", vocab, video=video[:1], audio=audio, audio_pattern="level_major", num_audio_levels=2)
    assert names(vocab, ex.input_ids)[7:11] == ["audio[0]:1", "audio[0]:2", "audio[1]:3", "audio[1]:4"]


def test_unused_modalities_are_ignored_and_text_condition_follows_the_flag(vocab):
    video = torch.randint(0, VIDEO, (3, 2, 2))
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 4))
    everything = dict(text=[1, 2], video=video, audio=audio)
    for task, layout in TASKS.items():
        minimal = {k: v for k, v in everything.items() if k in layout.needs}
        plain = build_example(task, vocab, **minimal).input_ids
        assert torch.equal(build_example(task, vocab, **everything, text_condition=False).input_ids, plain), task
        if layout.optional_text:
            for flag in (None, True):  # text given: None adds the condition, True requires it
                with_text = build_example(task, vocab, **everything, text_condition=flag)
                assert names(vocab, with_text.input_ids[2:6]) == ["<bot>", "text:1", "text:2", "<eot>"]
                assert parse_sequence(with_text.input_ids, vocab, latent_hw=(2, 2)).text == [1, 2]
            with pytest.raises(ValueError, match="needs text"):
                build_example(task, vocab, **minimal, text_condition=True)
        else:
            assert torch.equal(build_example(task, vocab, **everything).input_ids, plain), task
            with pytest.raises(ValueError, match="no optional text condition"):
                build_example(task, vocab, **everything, text_condition=True)


def test_continuation_and_image_tasks_split_the_video(vocab):
    video = torch.arange(4 * 2 * 2).reshape(4, 2, 2) % VIDEO
    i2v = names(vocab, build_example("i2v", vocab, video=video).input_ids)
    assert i2v[:8] == ["<bos>", "<i2v>", "<boi>", "video:0", "video:1", "video:2", "video:3", "<eoi>"]
    assert i2v[8] == "<bov>" and i2v[9] == "video:4" and i2v.count("<bov>") == 1
    vcont = build_example("vcont", vocab, video=video, cond_frames=1)
    parsed = parse_sequence(vcont.input_ids, vocab, latent_hw=(2, 2), video_frames=4)
    assert parsed.condition["video"].shape == (1, 2, 2) and parsed.output["video"].shape == (3, 2, 2)
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 8))
    av = build_example("avcont", vocab, video=video, audio=audio, cond_frames=2)  # default split 8 * 2/4 = 4
    parsed = parse_sequence(av.input_ids, vocab, latent_hw=(2, 2))
    assert parsed.condition["audio"].shape == (LEVELS, 4) and parsed.output["audio"].shape == (LEVELS, 4)
    t2i = parse_sequence(build_example("t2i", vocab, text=[1], video=video).input_ids, vocab, latent_hw=(2, 2))
    assert torch.equal(t2i.video, video[:1]) and "image" in t2i.output


@st.composite
def examples(draw):
    task = draw(st.sampled_from(sorted(TASKS)))
    t = draw(st.integers(2, 4))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    frames = draw(st.integers(2, 7))
    n_q = draw(st.integers(LEVELS, AUDIO_Q))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    text = draw(st.lists(st.integers(0, TEXT - 1), min_size=1, max_size=6))  # empty = dropped
    video = torch.randint(0, VIDEO, (t, h, w), generator=g)
    audio = torch.randint(0, AUDIO_CB, (n_q, frames), generator=g)
    pattern = draw(st.sampled_from(AUDIO_PATTERNS))
    levels = draw(st.integers(1, LEVELS))
    opt_text = draw(st.booleans())
    return task, text, video, audio, pattern, levels, opt_text


@settings(max_examples=150, deadline=None)
@given(examples())
def test_build_then_parse_round_trips_for_every_task(vocab, case):
    task, text, video, audio, pattern, levels, opt_text = case
    kw = inputs_for(task, text, video, audio, with_optional_text=opt_text)
    ex = build_example(task, vocab, **kw, audio_pattern=pattern, num_audio_levels=levels)
    parsed = parse_sequence(ex.input_ids, vocab, latent_hw=tuple(video.shape[1:]), video_frames=video.shape[0],
                            audio_frames=audio.shape[1], audio_pattern=pattern, num_audio_levels=levels)
    assert parsed.task == task and parsed.repairs == [] and not parsed.condition_dropped
    expected_video = video[:1] if task == "t2i" else video
    assert torch.equal(parsed.video, expected_video)
    if "audio" in kw:
        assert torch.equal(parsed.audio, audio[:levels])
    else:
        assert parsed.audio is None
    if "text" in kw:
        assert parsed.text == text
    else:
        assert parsed.text is None
    # the task is read from the sequence itself, and padding around it is ignored
    padded = torch.cat([torch.zeros(2, dtype=torch.long), ex.input_ids, torch.zeros(3, dtype=torch.long)])
    again = parse_sequence(padded, vocab, latent_hw=tuple(video.shape[1:]), audio_pattern=pattern,
                           num_audio_levels=levels)
    assert torch.equal(again.video, expected_video)


@settings(max_examples=80, deadline=None)
@given(examples())
def test_loss_mask_covers_exactly_the_output(vocab, case):
    task, text, video, audio, pattern, levels, opt_text = case
    kw = inputs_for(task, text, video, audio, with_optional_text=opt_text)
    ex = build_example(task, vocab, **kw, audio_pattern=pattern, num_audio_levels=levels)
    ids, mask, p = ex.input_ids, ex.loss_mask, ex.prefix_len
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    assert torch.equal(mask, torch.arange(len(ids)) >= p)
    first_out = TASKS[task].output[0]
    assert ids[p - 1] == vocab.token_id(BOUNDARY_TOKENS[first_out][0])  # prefix ends with the output's opener
    assert ids[0] == vocab.bos_id and ids[1] == vocab.token_id(TASKS[task].token) and ids[-1] == vocab.eos_id
    # the masked tokens are exactly: output bodies + their boundaries (minus the first opener) + <eos>
    parsed = parse_sequence(ids, vocab, latent_hw=tuple(video.shape[1:]), audio_pattern=pattern,
                            num_audio_levels=levels)
    body = sum(len(v) if isinstance(v, list) else v.numel() for v in parsed.output.values())
    n_out_segments = len(TASKS[task].output)
    assert int(mask.sum()) == body + 2 * n_out_segments - 1 + 1
    # build_prompt reproduces the prefix
    prompt_kw = dict(kw)
    if task == "vcont":
        prompt_kw["video"] = video[: max(1, video.shape[0] // 2)]
    if task == "v2t":
        prompt_kw.pop("text")
    if task in ("t2v", "t2i"):
        prompt_kw.pop("video")
    if task == "v2a":
        prompt_kw.pop("audio")
    if task == "a2v":
        prompt_kw.pop("video")
    if task == "avcont":
        k = max(1, video.shape[0] // 2)
        prompt_kw.update(cond_frames=k, audio_split=round(k / video.shape[0] * audio.shape[1]))
    prompt = build_prompt(task, vocab, **prompt_kw, audio_pattern=pattern, num_audio_levels=levels)
    assert torch.equal(prompt, ids[:p])


@settings(max_examples=80, deadline=None)
@given(examples())
def test_sampling_inside_the_output_constraints_always_parses(vocab, case):
    task, text, video, audio, pattern, levels, opt_text = case
    if task == "v2t":
        with pytest.raises(ValueError, match="no fixed length"):
            output_constraints(task, vocab, latent_hw=(1, 1))
        return
    t, h, w = video.shape
    kw = inputs_for(task, text, video, audio, with_optional_text=opt_text)
    ex = build_example(task, vocab, **kw, audio_pattern=pattern, num_audio_levels=levels)
    cons = output_constraints(task, vocab, latent_hw=(h, w), video_frames=t, audio_frames=audio.shape[1],
                              audio_pattern=pattern, num_audio_levels=levels)
    assert cons.shape == (len(ex) - ex.prefix_len, 2)
    real = ex.input_ids[ex.prefix_len:]
    assert bool(((real >= cons[:, 0]) & (real < cons[:, 1])).all())  # the true output satisfies them
    g = torch.Generator().manual_seed(t * 31 + h)
    sampled = cons[:, 0] + (torch.rand(len(cons), generator=g) * (cons[:, 1] - cons[:, 0])).long()
    parsed = parse_sequence(torch.cat([ex.input_ids[: ex.prefix_len], sampled]), vocab, latent_hw=(h, w),
                            video_frames=t, audio_frames=audio.shape[1], audio_pattern=pattern,
                            num_audio_levels=levels)
    assert parsed.repairs == []
    assert parsed.video.shape == (1 if task == "t2i" else t, h, w)


def test_cfg_dropout_frequency_and_empty_condition(vocab):
    rng = random.Random(0)
    video = torch.randint(0, VIDEO, (2, 2, 2))
    n, p = 4000, 0.2
    full = build_example("t2v", vocab, text=[1, 2, 3], video=video)
    dropped = 0
    for _ in range(n):
        ex = build_example("t2v", vocab, text=[1, 2, 3], video=video, cond_dropout=p, rng=rng)
        if ex.condition_dropped:
            dropped += 1
            assert names(vocab, ex.input_ids[:5]) == ["<bos>", "<t2v>", "<bot>", "<eot>", "<bov>"]
            assert torch.equal(ex.input_ids[ex.prefix_len:], full.input_ids[full.prefix_len:])
            assert int(ex.loss_mask.sum()) == int(full.loss_mask.sum())
        else:
            assert torch.equal(ex.input_ids, full.input_ids)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 5 * sigma, (dropped, n * p)
    # deterministic per seed; p=0 never drops, p=1 always drops
    draws = []
    for _ in range(2):
        seeded = random.Random(7)
        draws.append([build_example("t2v", vocab, text=[1], video=video, cond_dropout=0.5,
                                    rng=seeded).condition_dropped for _ in range(50)])
    assert draws[0] == draws[1] and 0 < sum(draws[0]) < 50
    assert not build_example("t2v", vocab, text=[1], video=video, cond_dropout=0.0).condition_dropped
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 4))
    ex = build_example("avcont", vocab, text=[4], text_condition=True, video=torch.randint(0, VIDEO, (4, 1, 1)),
                       audio=audio, cond_dropout=1.0, rng=rng)
    parsed = parse_sequence(ex.input_ids, vocab, latent_hw=(1, 1), video_frames=4, audio_frames=4,
                            cond_frames=2, audio_split=2)
    assert parsed.condition_dropped and parsed.output["video"].shape[0] == 2 and parsed.condition["text"] == []
    uncond = build_prompt("t2v", vocab, text=[1, 2, 3], unconditional=True)
    assert names(vocab, uncond) == ["<bos>", "<t2v>", "<bot>", "<eot>", "<bov>"]


def test_audio_flattening_patterns_invert():
    codes = torch.arange(12).reshape(3, 4)  # [L=3, frames=4]
    fm = flatten_audio(codes, "frame_major")
    assert fm[:6].tolist() == [0, 4, 8, 1, 5, 9]
    assert flatten_audio(codes, "level_major")[:5].tolist() == [0, 1, 2, 3, 4]
    for pattern in AUDIO_PATTERNS:
        assert torch.equal(unflatten_audio(flatten_audio(codes, pattern), 3, pattern), codes)
    with pytest.raises(ValueError, match="unknown audio pattern"):
        flatten_audio(codes, "delay")
    with pytest.raises(ValueError, match="whole number"):
        unflatten_audio(fm[:-1], 3)


def test_builder_errors_name_the_problem(vocab):
    video = torch.randint(0, VIDEO, (3, 2, 2))
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 4))
    with pytest.raises(ValueError, match="unknown task"):
        build_example("t2x", vocab, video=video)
    with pytest.raises(ValueError, match="needs text"):
        build_example("t2v", vocab, video=video)
    with pytest.raises(ValueError, match="needs audio"):
        build_example("v2a", vocab, video=video)
    with pytest.raises(ValueError, match="needs text"):
        build_example("v2t", vocab, video=video)
    with pytest.raises(ValueError, match=r"\[T', H', W'\]"):
        build_example("t2v", vocab, text=[1], video=video.reshape(-1))
    with pytest.raises(ValueError, match=r"\[T', H', W'\]"):
        build_example("t2v", vocab, text=[1], video=video.float())
    with pytest.raises(ValueError, match="local video codes outside"):
        build_example("t2v", vocab, text=[1], video=video + VIDEO)
    with pytest.raises(ValueError, match="local text codes outside"):
        build_example("t2v", vocab, text=[TEXT], video=video)
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        build_example("i2v", vocab, video=video[:1])
    with pytest.raises(ValueError, match="cond_frames must be in"):
        build_example("vcont", vocab, video=video, cond_frames=3)
    with pytest.raises(ValueError, match="audio_split must be in"):
        build_example("avcont", vocab, video=video, audio=audio, audio_split=4)
    with pytest.raises(ValueError, match="4 are needed"):
        build_example("v2a", vocab, video=video, audio=audio[:2])
    with pytest.raises(ValueError, match="num_audio_levels must be in"):
        build_example("v2a", vocab, video=video, audio=audio, num_audio_levels=5)
    with pytest.raises(ValueError, match="probability"):
        build_example("t2v", vocab, text=[1], video=video, cond_dropout=1.5)


# ------------------------------------------------------------------------------------------------ parse errors
def _t2v(vocab):
    video = torch.randint(0, VIDEO, (2, 2, 2), generator=torch.Generator().manual_seed(0))
    return build_example("t2v", vocab, text=[3, 4], video=video), video


def _parse(ids, vocab, **kw):
    kw.setdefault("latent_hw", (2, 2))
    kw.setdefault("video_frames", 2)
    return parse_sequence(torch.as_tensor(ids), vocab, **kw)


def test_parse_truncated_generation_strict_and_repaired(vocab):
    ex, video = _t2v(vocab)
    cut = ex.input_ids[:-4]  # lost 2 video tokens, <eov> and <eos>
    with pytest.raises(SequenceError, match="not closed by <eov>"):
        _parse(cut, vocab)
    fixed = _parse(cut, vocab, repair=True)
    assert fixed.video.shape == (2, 2, 2)
    assert torch.equal(fixed.video.reshape(-1)[:6], video.reshape(-1)[:6])
    assert fixed.video.reshape(-1)[6:].tolist() == [0, 0]
    joined = " | ".join(fixed.repairs)
    assert "<eov>" in joined and "<eos>" in joined and "padded the out video segment with 2" in joined
    # without an expected frame count it pads to whole frames
    loose = parse_sequence(cut, vocab, latent_hw=(2, 2), repair=True)
    assert loose.video.shape == (2, 2, 2)


def test_parse_each_error_case(vocab):
    ex, video = _t2v(vocab)
    ids = ex.input_ids.tolist()
    bos, eos = vocab.bos_id, vocab.eos_id
    v0 = vocab.range_of("video").start
    cases = {
        "does not start with <bos>": ids[1:],
        "sequence is a 't2v' sequence, task='v2t'": (ids, {"task": "v2t"}),
        "no task token": ids[:1] + ids[2:],
        "expected <bov>": ids[:6] + ids[7:],
        "expected <eos>": ids[:-1] + [vocab.token_id("<boa>")],
        "tokens after <eos>": ids + [v0, v0],
        "not text ids": ids[:3] + [v0] + ids[4:],
        "not video codes": ids[:7] + [vocab.range_of("text").start] + ids[8:],
        "has 12 tokens, 8 expected": ids[:7] + [v0] * 4 + ids[7:],
        "outside the vocabulary": ids[:7] + [vocab.size + 5] + ids[8:],
    }
    for message, case in cases.items():
        seq, kw = case if isinstance(case, tuple) else (case, {})
        with pytest.raises(SequenceError, match=message):
            _parse(seq, vocab, **kw)
        if message in ("no task token", "sequence is a 't2v' sequence, task='v2t'"):
            with pytest.raises(SequenceError):  # never repaired: the task is unknown or contradicts task=
                _parse(seq, vocab, repair=True, **kw)
            continue
        fixed = _parse(seq, vocab, repair=True, **kw)
        assert fixed.repairs, message
        assert fixed.video.shape == (2, 2, 2), message
    # with task= given, a missing task token is repairable
    fixed = _parse(cases["no task token"], vocab, task="t2v", repair=True)
    assert torch.equal(fixed.video, video) and any("task token" in r for r in fixed.repairs)
    with pytest.raises(SequenceError, match="latent_hw"):
        parse_sequence(ex.input_ids, vocab)
    with pytest.raises(SequenceError, match="1-D integer sequence"):
        parse_sequence(ex.input_ids.unsqueeze(0), vocab, latent_hw=(2, 2))
    with pytest.raises(SequenceError, match="empty"):
        parse_sequence(torch.zeros(4, dtype=torch.long), vocab, latent_hw=(2, 2))


def test_parse_audio_levels_are_checked(vocab):
    video = torch.randint(0, VIDEO, (1, 1, 1))
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 3))
    ex = build_example("v2a", vocab, video=video, audio=audio)
    ids = ex.input_ids.clone()
    start = ex.prefix_len
    ids[start], ids[start + 1] = ids[start + 1].clone(), ids[start].clone()  # levels 0 and 1 swapped
    with pytest.raises(SequenceError, match="not codes of their RVQ level"):
        parse_sequence(ids, vocab, latent_hw=(1, 1))
    fixed = parse_sequence(ids, vocab, latent_hw=(1, 1), repair=True)
    assert fixed.audio[:2, 0].tolist() == [0, 0] and torch.equal(fixed.audio[:, 1:], audio[:, 1:])
    with pytest.raises(SequenceError, match="audio frames of 4"):
        parse_sequence(ex.input_ids[:-3].tolist() + ex.input_ids[-2:].tolist(), vocab, latent_hw=(1, 1))


# ------------------------------------------------------------------------------------- run-length video conditions
MAX_RUN = 3


@pytest.fixture(scope="module")
def runs_vocab(vocab) -> UnifiedVocabulary:
    return vocab.with_video_runs(MAX_RUN)


def _repeating_video(t: int, h: int, w: int, seed: int, p_repeat: float) -> torch.Tensor:
    """Codes ``[t, h, w]`` where each cell repeats the one a frame earlier with probability ``p_repeat``."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, VIDEO, (t, h, w), generator=g)
    for k in range(1, t):
        keep = torch.rand(h, w, generator=g) < p_repeat
        video[k][keep] = video[k - 1][keep]
    return video


@settings(max_examples=120, deadline=None)
@given(task=st.sampled_from(list(TASKS)), t=st.integers(2, 5), h=st.integers(1, 3), w=st.integers(1, 4),
       p_repeat=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**16), opt_text=st.booleans())
def test_run_length_conditions_shorten_the_prefix_keep_the_output_and_parse_back(vocab, runs_vocab, task, t, h, w,
                                                                                  p_repeat, seed, opt_text):
    from mmtok.run_length import run_length_encode_video

    video = _repeating_video(t, h, w, seed, p_repeat)
    audio = torch.randint(0, AUDIO_CB, (LEVELS, 4), generator=torch.Generator().manual_seed(seed))
    kw = inputs_for(task, [1, 2, 3], video, audio, with_optional_text=opt_text)
    plain = build_example(task, runs_vocab, **kw)                      # the run vocabulary, plain form
    runs = build_example(task, runs_vocab, **kw, video_runs=True)
    assert torch.equal(plain.input_ids, build_example(task, vocab, **kw).input_ids)  # run tokens move no other id
    # the output (and the loss mask over it) is untouched; only the video condition shrinks, by the folded cells
    assert torch.equal(runs.input_ids[runs.prefix_len:], plain.input_ids[plain.prefix_len:])
    assert torch.equal(runs.loss_mask, torch.arange(len(runs)) >= runs.prefix_len)
    cond_video = {"v2a": video, "v2t": video, "vcont": video[:max(1, t // 2)], "avcont": video[:max(1, t // 2)]}
    if task in cond_video:
        rl = run_length_encode_video(cond_video[task], max_run=MAX_RUN)
        assert plain.prefix_len - runs.prefix_len == cond_video[task].numel() - rl.numel()
        run_ids = runs.input_ids[(runs.input_ids >= runs_vocab.range_of("video_run").start)]
        assert run_ids.numel() == int((rl < 0).sum())
        if p_repeat == 1.0 and h * w > 1 and cond_video[task].shape[0] > 1:
            assert runs.prefix_len < plain.prefix_len                  # a static clip folds (1-cell runs do not)
    else:  # t2v, t2i, a2v have no video condition; i2v's is one frame
        assert torch.equal(runs.input_ids, plain.input_ids)
    # both forms parse to the same codes, strictly, with no repair
    for ex in (plain, runs):
        parsed = parse_sequence(ex.input_ids, runs_vocab, latent_hw=(h, w), video_frames=t)
        assert parsed.repairs == [] and parsed.task == task
        assert torch.equal(parsed.video, video[:1] if task == "t2i" else video)
    # the prompt is the example's prefix in the same form
    if task in ("v2a", "v2t", "vcont"):
        k = max(1, t // 2)
        prompt = build_prompt(task, runs_vocab, video=video[:k] if task == "vcont" else video,
                              text=kw.get("text"), text_condition=kw.get("text_condition"), video_runs=True)
        assert torch.equal(prompt, runs.input_ids[:runs.prefix_len])


def test_run_length_example_reads_as_expected(runs_vocab):
    video = torch.tensor([[[1, 2, 3]], [[1, 2, 9]], [[1, 2, 9]]])     # [T'=3, H'=1, W'=3]
    audio = torch.zeros(LEVELS, 1, dtype=torch.long)
    ex = build_example("v2a", runs_vocab, video=video, audio=audio, video_runs=True)
    assert names(runs_vocab, ex.input_ids[:ex.prefix_len]) == [
        "<bos>", "<v2a>", "<bov>", "video:1", "video:2", "video:3", "<run_2>", "video:9", "<run_3>", "<eov>", "<boa>"]
    assert ex.prefix_len == 11
    # cfg dropout empties a run-length condition like a plain one
    dropped = build_example("v2a", runs_vocab, video=video, audio=audio, video_runs=True, cond_dropout=1.0)
    assert names(runs_vocab, dropped.input_ids[:5]) == ["<bos>", "<v2a>", "<bov>", "<eov>", "<boa>"]
    assert parse_sequence(dropped.input_ids, runs_vocab, latent_hw=(1, 3)).condition_dropped
    # the output constraints do not depend on the option (outputs are plain codes)
    cons = output_constraints("v2a", runs_vocab, latent_hw=(1, 3), video_frames=3, audio_frames=1)
    assert torch.equal(cons[:, 0], ex.input_ids[ex.prefix_len:])


def test_video_runs_need_run_tokens_and_malformed_runs_are_named(vocab, runs_vocab):
    video = torch.tensor([[[1, 2, 3]], [[1, 2, 9]]])
    audio = torch.zeros(LEVELS, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a vocabulary with run tokens"):
        build_example("v2a", vocab, video=video, audio=audio, video_runs=True)
    with pytest.raises(ValueError, match="needs a vocabulary with run tokens"):
        build_prompt("v2t", vocab, video=video, video_runs=True)
    ids = build_example("v2a", runs_vocab, video=video, audio=audio, video_runs=True).input_ids.tolist()
    assert names(runs_vocab, ids[3:7]) == ["video:1", "video:2", "video:3", "<run_2>"]
    run2, run3 = runs_vocab.run_token_id(2), runs_vocab.run_token_id(3)
    cases = {
        "latent frame 0": ids[:4] + [run2] + ids[6:],                  # frame 0: 1 <run_2> | frame 1 as before
        "passes the frame's end": ids[:6] + [ids[7], run3] + ids[8:],  # frame 1: 9 <run_3> -> 4 cells
    }
    for message, seq in cases.items():
        with pytest.raises(SequenceError, match=message):
            parse_sequence(seq, runs_vocab, latent_hw=(1, 3))
        fixed = parse_sequence(seq, runs_vocab, latent_hw=(1, 3), repair=True)
        assert any("malformed runs" in r for r in fixed.repairs)
    fixed = parse_sequence(cases["latent frame 0"], runs_vocab, latent_hw=(1, 3), repair=True)
    assert fixed.condition["video"].tolist() == [[[1, 0, 0]], [[1, 0, 9]]]  # cells copied from before frame 0: 0
    # a run in an image segment (one frame) is a run in frame 0
    i2v = build_example("i2v", runs_vocab, video=video).input_ids.tolist()
    with pytest.raises(SequenceError, match="latent frame 0"):
        parse_sequence(i2v[:3] + [runs_vocab.run_token_id(1)] + i2v[4:], runs_vocab, latent_hw=(1, 3))
