"""Generation (lm/generation.py) on a tiny random model and tiny real tokenizers.

What must hold even for an untrained model: every output parses strictly and decodes to media of the asked size
(constrained decoding), guidance at scale 1 is plain conditional sampling, a seed fixes the tokens, and the KV cache,
left padding and batching of the conditional/unconditional rows do not change greedy tokens.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from lm import MMLMConfig, MMLMForCausalLM
from lm.generation import (
    GenerationError,
    MultimodalGenerator,
    RangeConstraintLogitsProcessor,
    SamplingConfig,
    sample_tokens,
)
from mmtok.audio import AudioTokenizer
from mmtok.multimodal import MultimodalTokenizer
from mmtok.sequence import output_constraints, parse_sequence
from mmtok.text import TextTokenizer
from mmtok.video import VideoTokenizer

CAPTIONS = ["a red seven drifts up", "the digit 3 in blue heading east", "a green two moves down and to the left",
            "a yellow nine bounces right", "the digit 0 in white, heading north-west"]
FRAMES = 9  # 1 + 4k frames -> 3 latent frames of 4x4 codes with the debug video tokenizer
HW = 16  # debug video tokenizer: 16x16 frames -> 4x4 latents


def make_bundle() -> MultimodalTokenizer:
    torch.manual_seed(0)
    text = TextTokenizer.train(CAPTIONS * 4, vocab_size=48)
    video = VideoTokenizer.from_preset("debug").eval()
    audio = AudioTokenizer.from_preset("debug", ratios=(4, 4, 4, 4)).eval()  # hop 256: short audio sequences
    return MultimodalTokenizer(text=text, video=video, audio=audio, num_audio_levels=2, latent_hw=(4, 4))


def make_model(bundle: MultimodalTokenizer, seed: int = 0, **overrides) -> MMLMForCausalLM:
    torch.manual_seed(seed)
    return MMLMForCausalLM(MMLMConfig.from_preset("debug", vocab=bundle.vocab, **overrides)).eval()


@pytest.fixture(scope="module")
def bundle() -> MultimodalTokenizer:
    return make_bundle()


@pytest.fixture(scope="module")
def gen(bundle) -> MultimodalGenerator:
    return MultimodalGenerator(make_model(bundle), bundle, num_frames=FRAMES)


def clip(seed: int = 0, frames: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, HW, HW, 3), dtype=torch.uint8, generator=g)  # [T, H, W, 3]


def run_task(gen: MultimodalGenerator, task: str, **kw):
    if task == "t2v":
        return gen.text_to_video(CAPTIONS[0], **kw)
    if task == "t2i":
        return gen.text_to_image(CAPTIONS[1], **kw)
    if task == "v2a":
        return gen.video_to_audio(clip(1), **kw)
    if task == "a2v":
        return gen.audio_to_video(torch.randn(18000) * 0.1, **kw)  # 1.125 s = 9 frames at 8 fps
    if task == "vcont":
        return gen.continue_video(clip(2), 4, **kw)
    if task == "i2v":
        return gen.image_to_video(clip(3, frames=1)[0], **kw)
    raise AssertionError(task)


def assert_in_constraints(result, gen: MultimodalGenerator, **sizes) -> None:
    cons = output_constraints(result.task, gen.vocab, latent_hw=gen.latent_hw, audio_pattern=gen.bundle.audio_pattern,
                              num_audio_levels=gen.bundle.num_audio_levels, **sizes)
    assert result.output_ids.shape[1] == cons.shape[0]
    lo, hi = cons[:, 0], cons[:, 1]
    assert bool(((result.output_ids >= lo) & (result.output_ids < hi)).all())


# ------------------------------------------------------------------------------------ constrained decoding
@pytest.mark.parametrize("task", ["t2v", "t2i", "v2a", "a2v", "vcont", "i2v"])
def test_every_task_yields_strictly_parseable_decodable_media_from_a_random_model(gen, task):
    result = run_task(gen, task, temperature=1.5, num_samples=2, seed=0)
    assert len(result) == 2 and result.input_index == [0, 0]
    for seq, parsed in zip(result.sequences, result.parsed):
        assert parsed.repairs == [] and parsed.task == task
        # The strict parser (no repair) accepts the raw sequence on its own, too.
        parse_sequence(seq, gen.vocab, task=task, latent_hw=gen.latent_hw, num_audio_levels=2)
    if task in ("t2v", "a2v"):
        assert result.video.shape == (2, 3, FRAMES, HW, HW) and result.audio is None
        assert_in_constraints(result, gen, video_frames=3)
    elif task == "t2i":
        assert result.video.shape == (2, 3, 1, HW, HW) and result.image.shape == (2, 3, HW, HW)
    elif task == "v2a":
        samples = round(5 / gen.fps * gen.sample_rate)  # the clip's duration, exactly
        assert result.video is None and result.audio.shape == (2, 1, samples)
        assert_in_constraints(result, gen, audio_frames=gen.audio_frames_for(5))
    elif task == "vcont":
        assert result.video.shape == (2, 3, 5 + 4, HW, HW) and result.new_frames_from == 5
        expected = gen.bundle.encode_media(video=clip(2))["video"]
        assert torch.equal(result.parsed[0].condition["video"], expected)
    elif task == "i2v":
        assert result.video.shape == (2, 3, FRAMES, HW, HW) and result.new_frames_from == 1
    for name in ("video", "audio"):
        x = getattr(result, name)
        if x is not None:
            assert torch.isfinite(x).all()
    if result.video is not None:
        frames = result.frames(1)
        assert frames.dtype == torch.uint8 and frames.shape == (result.video.shape[2], HW, HW, 3)


def test_constraints_hold_against_a_model_that_wants_to_stop(bundle):
    """A model pushed hard towards <eos>/<pad> still produces the exact layout: the constraint decides."""
    model = make_model(bundle, seed=1)
    vocab = bundle.vocab

    def push(module, inputs, output):  # logits [B, L, V]
        output[..., vocab.eos_id] += 1e4
        output[..., vocab.pad_id] += 1e4
        return output

    handle = model.lm_head.register_forward_hook(push)
    try:
        g = MultimodalGenerator(model, bundle, num_frames=FRAMES)
        result = g.text_to_video(CAPTIONS[2], temperature=0)
        assert result.parsed[0].repairs == [] and result.video.shape == (1, 3, FRAMES, HW, HW)
        assert (result.output_ids[0, :-2] != vocab.eos_id).all()
        # Unconstrained, the same model emits <eos> at once: the processor is what keeps the layout.
        prompt = bundle.build_prompt("t2v", text=bundle.text.encode(CAPTIONS[2]))
        free = model.generate(prompt[None], max_new_tokens=3, do_sample=False,
                              prefix_len=torch.tensor([prompt.numel()]))
        assert int(free[0, prompt.numel()]) in (vocab.eos_id, vocab.pad_id)
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------- classifier-free guidance
def test_cfg_scale_one_equals_plain_conditional_sampling(gen):
    for task in ("t2v", "v2a"):
        plain = run_task(gen, task, temperature=1.0, top_k=20, seed=7, num_samples=2)
        guided = run_task(gen, task, temperature=1.0, top_k=20, seed=7, num_samples=2, cfg_scale=1.0)
        assert torch.equal(plain.output_ids, guided.output_ids)
    strong = run_task(gen, "t2v", temperature=1.0, top_k=20, seed=7, num_samples=2, cfg_scale=4.0)
    assert not torch.equal(strong.output_ids, gen.text_to_video(CAPTIONS[0], temperature=1.0, top_k=20, seed=7,
                                                               num_samples=2).output_ids)


def test_guided_greedy_tokens_match_separate_conditional_and_unconditional_passes(bundle, gen):
    """The batched [cond; uncond] forward (left-padded uncond rows) gives the same guided argmax as two
    independent unpadded forwards per step, combined by hand: u + s (c - u)."""
    scale = 2.5
    result = gen.text_to_image(CAPTIONS[3], temperature=0, cfg_scale=scale)
    text = bundle.text.encode(CAPTIONS[3])
    cond = bundle.build_prompt("t2i", text=text)
    uncond = bundle.build_prompt("t2i", text=text, unconditional=True)
    assert uncond.numel() < cond.numel()  # so the batched run really pads
    cons = output_constraints("t2i", bundle.vocab, latent_hw=(4, 4))
    c_seq, u_seq, toks = cond[None], uncond[None], []
    with torch.no_grad():
        for lo, hi in cons.tolist():
            c = gen.model(c_seq, prefix_len=torch.tensor([cond.numel()])).logits[0, -1]
            u = gen.model(u_seq, prefix_len=torch.tensor([uncond.numel()])).logits[0, -1]
            guided = u + scale * (c - u)
            tok = lo + int(guided[lo:hi].argmax())
            toks.append(tok)
            c_seq = torch.cat([c_seq, torch.tensor([[tok]])], 1)
            u_seq = torch.cat([u_seq, torch.tensor([[tok]])], 1)
    assert result.output_ids[0].tolist() == toks


# ------------------------------------------------------------------------------------------------ determinism
def test_seed_fixes_the_tokens_and_samples_differ(gen):
    a = gen.text_to_video(CAPTIONS[:2], num_samples=2, seed=3, top_p=0.9)
    b = gen.text_to_video(CAPTIONS[:2], num_samples=2, seed=3, top_p=0.9)
    c = gen.text_to_video(CAPTIONS[:2], num_samples=2, seed=4, top_p=0.9)
    assert a.output_ids.shape == (4, 50) and a.input_index == [0, 0, 1, 1]
    assert torch.equal(a.output_ids, b.output_ids) and torch.equal(a.video, b.video)
    assert not torch.equal(a.output_ids, c.output_ids)
    assert not torch.equal(a.output_ids[0], a.output_ids[1])  # two samples of one prompt differ
    # The global RNG plays no part when a seed is given.
    torch.manual_seed(123)
    d = gen.text_to_video(CAPTIONS[:2], num_samples=2, seed=3, top_p=0.9)
    assert torch.equal(a.output_ids, d.output_ids)


def test_greedy_is_sampling_free_and_top_k_one_matches_it(gen):
    greedy = gen.text_to_video(CAPTIONS[0], temperature=0)
    top1 = gen.text_to_video(CAPTIONS[0], temperature=0.7, top_k=1, seed=11)
    assert torch.equal(greedy.output_ids, top1.output_ids)


# ----------------------------------------------------------------------------------------- cache and padding
@pytest.mark.parametrize("prefix_lm", [True, False])
def test_kv_cache_and_no_cache_give_the_same_greedy_tokens(bundle, prefix_lm):
    g = MultimodalGenerator(make_model(bundle, seed=2, prefix_lm=prefix_lm), bundle, num_frames=FRAMES)
    for cfg_scale in (None, 3.0):  # with guidance the unconditional rows are left-padded
        cached = g.text_to_video(CAPTIONS[4], temperature=0, cfg_scale=cfg_scale, use_cache=True)
        uncached = g.text_to_video(CAPTIONS[4], temperature=0, cfg_scale=cfg_scale, use_cache=False)
        assert torch.equal(cached.output_ids, uncached.output_ids)


def test_kv_cache_and_no_cache_agree_with_video_position_embeddings(bundle):
    model = make_model(bundle, seed=3, video_grid=[3, 4, 4])
    with torch.no_grad():
        model.model.embed_video_positions.cell.weight.normal_()
    g = MultimodalGenerator(model, bundle, num_frames=FRAMES)
    for cfg_scale in (None, 3.0):
        cached = g.text_to_video(CAPTIONS[4], temperature=0, cfg_scale=cfg_scale, use_cache=True)
        uncached = g.text_to_video(CAPTIONS[4], temperature=0, cfg_scale=cfg_scale, use_cache=False)
        assert torch.equal(cached.output_ids, uncached.output_ids)


def test_a_bundle_with_run_length_conditions_prompts_with_runs_and_caches_exactly(bundle):
    runs = bundle.with_video_runs()                                    # <run_1> .. <run_16> for the 4x4 latents
    model = make_model(runs, seed=4, video_grid=[3, 4, 4])
    with torch.no_grad():
        model.model.embed_video_positions.cell.weight.normal_()
    g = MultimodalGenerator(model, runs, num_frames=FRAMES)
    video = torch.randint(0, len(runs.vocab.range_of("video")), (2, 4, 4), generator=torch.Generator().manual_seed(0))
    video[1] = video[0]                                                # a still condition: frame 1 is one <run_16>
    run16 = runs.vocab.run_token_id(16)
    for cfg_scale in (None, 3.0):  # with guidance, the empty unconditional prompt is left-padded
        cached, uncached = (g.generate_from_codes("vcont", [{"video": video}], video_frames=3, cond_frames=2,
                                                  decode=False, sampling=SamplingConfig(
                                                      temperature=0, cfg_scale=cfg_scale, use_cache=use_cache))
                            for use_cache in (True, False))
        assert torch.equal(cached.output_ids, uncached.output_ids)
        seq = cached.sequences[0]
        assert int((seq == run16).sum()) == 1
        assert not bool((seq[-18:] >= runs.vocab.run_token_id(1)).any())  # the output: 16 plain codes, <eov> <eos>
        assert torch.equal(cached.parsed[0].condition["video"], video)  # the condition parses back to its codes
        assert cached.parsed[0].video.shape == (3, 4, 4)


def test_batched_left_padded_prompts_match_single_prompts(gen):
    both = gen.text_to_video([CAPTIONS[2], "blue"], temperature=0)
    for i, caption in enumerate([CAPTIONS[2], "blue"]):
        assert torch.equal(both.output_ids[i], gen.text_to_video(caption, temperature=0).output_ids[0])


def test_hf_generate_with_the_constraint_processor_matches_the_loop(bundle, gen):
    ours = gen.text_to_video(CAPTIONS[1], temperature=0)
    prompt = bundle.build_prompt("t2v", text=bundle.text.encode(CAPTIONS[1]))
    cons = output_constraints("t2v", bundle.vocab, latent_hw=(4, 4), video_frames=3)
    processors = LogitsProcessorList([RangeConstraintLogitsProcessor(cons, prompt.numel())])
    hf = gen.model.generate(prompt[None], max_new_tokens=cons.shape[0], do_sample=False,
                            prefix_len=torch.tensor([prompt.numel()]), logits_processor=processors)
    assert torch.equal(hf[0, prompt.numel():], ours.output_ids[0])


def test_sample_tokens_directly(bundle, gen):
    cons = torch.tensor([[bundle.vocab.range_of("video").start, bundle.vocab.range_of("video").stop]] * 4
                        + [[bundle.vocab.eos_id, bundle.vocab.eos_id + 1]])
    prompts = [torch.tensor([bundle.vocab.bos_id, 5, 6]), torch.tensor([bundle.vocab.bos_id])]
    out = sample_tokens(gen.model, prompts, cons, sampling=SamplingConfig(num_samples=3, seed=0))
    assert out.shape == (6, 5) and (out[:, -1] == bundle.vocab.eos_id).all()
    with pytest.raises(ValueError, match="unconditional"):
        sample_tokens(gen.model, prompts, cons, sampling=SamplingConfig(cfg_scale=2.0))


# -------------------------------------------------------------------------------------------------- errors
def test_inputs_the_tokenizers_cannot_take_raise_clear_errors(gen):
    with pytest.raises(GenerationError, match="16x16"):
        gen.video_to_audio(torch.zeros(5, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(GenerationError, match=r"1 \+ 4k"):
        gen.video_to_audio(torch.zeros(6, HW, HW, 3, dtype=torch.uint8))
    with pytest.raises(GenerationError, match="uint8"):
        gen.video_to_audio(torch.zeros(5, HW, HW))
    with pytest.raises(GenerationError, match="multiple"):
        gen.continue_video(clip(), 3)
    with pytest.raises(GenerationError, match="mono"):
        gen.audio_to_video(torch.zeros(2, 100))
    with pytest.raises(GenerationError, match="empty"):
        gen.text_to_video("   ")
    with pytest.raises(GenerationError, match="1 \\+ 4k"):
        gen.text_to_video(CAPTIONS[0], num_frames=8)
    with pytest.raises(GenerationError, match="v2t"):
        gen.generate_from_codes("v2t", [{"video": torch.zeros(3, 4, 4, dtype=torch.long)}])
    with pytest.raises(ValueError, match="top_p"):
        gen.text_to_video(CAPTIONS[0], top_p=1.5)
    with pytest.raises(TypeError, match="unknown generation arguments"):
        gen.text_to_video(CAPTIONS[0], top_n=3)
    with pytest.raises(GenerationError, match="2 captions for 1 inputs"):
        gen.video_to_audio(clip(), text=["a", "b"])


def test_model_and_bundle_of_different_vocabularies_are_refused(bundle):
    other = MultimodalTokenizer(text=bundle.text, video=bundle.video, latent_hw=(4, 4))  # no audio: another layout
    model = make_model(bundle)
    with pytest.raises(ValueError) as err:
        MultimodalGenerator(model, other)
    assert bundle.vocab.fingerprint in str(err.value) and other.vocab.fingerprint in str(err.value)


def test_from_pretrained_loads_an_export_dir_and_names_what_is_missing(bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        MultimodalGenerator.from_pretrained(tmp_path / "nope")
    export = tmp_path / "export"
    model = make_model(bundle, seed=5)
    model.save_pretrained(export)
    with pytest.raises(FileNotFoundError, match="multimodal_tokenizer.json"):
        MultimodalGenerator.from_pretrained(export)
    bundle.save_pretrained(export)
    loaded = MultimodalGenerator.from_pretrained(export, num_frames=FRAMES)
    a = loaded.text_to_video(CAPTIONS[0], temperature=0)
    b = MultimodalGenerator(model, bundle, num_frames=FRAMES).text_to_video(CAPTIONS[0], temperature=0)
    assert torch.equal(a.output_ids, b.output_ids)


def test_a_generator_with_default_settings(bundle, gen):
    g = MultimodalGenerator(gen.model, bundle)  # a model and bundle in memory, no settings: the frame count per call
    r = g.text_to_video(CAPTIONS[0], num_frames=5, temperature=0)
    assert r.video.shape == (1, 3, 5, HW, HW)
    r = g.video_to_audio(clip(4), seed=0)
    assert r.audio.shape[-1] == round(5 / 8 * 16000)
