"""Evaluation of a trained VATT model (:class:`lm.modeling_vatt.VATTModel`): zero-shot retrieval and linear probes on
frozen embeddings, each beside its chance baseline.

* :func:`embed_clips` - every embedding of a set of clips (:class:`mmtok.data.av_clips.AVClips`) in batches.
* :func:`retrieval_scores` - text->video, video->text, video->audio and audio->video R@k and median rank
  (:func:`mmtok.metrics.retrieval_metrics`, as :mod:`lm.zero_shot` for the LM's head).
* :func:`linear_probe` - multinomial logistic regression fitted on frozen train-split features, scored on test
  (VATT's linear evaluation protocol, on the pooled tower outputs).
* :func:`evaluate_vatt` - both on a test split, the flat ``{name: value}`` dict ``recipes/train_vatt.py`` writes
  and ``bench/token_efficiency.py`` reads.
* :func:`load_vatt_export` - a trained model with its text tokenizer and clip settings.

Dataset-agnostic: the probe labels come in as ``{label: {clip id: class}}`` with the modality each is read from
(the Moving-Digits corpus supplies them: :func:`mmtok.datasets.moving_digits.probe_labels`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from lm.modeling_vatt import VATTModel, pad_text_ids
from lm.zero_shot import eval_mode
from mmtok.data.av_clips import AVClips
from mmtok.data.ingest import ClipConfig
from mmtok.io import atomic_write
from mmtok.metrics import retrieval_metrics

__all__ = ["CLIP_CONFIG_FILE", "ProbeResult", "embed_clips", "evaluate_vatt", "linear_probe", "load_vatt_export",
           "retrieval_scores", "save_clip_config"]

CLIP_CONFIG_FILE = "clip_config.json"   # beside an export: how its clips were decoded (fps, frames, size, rate)


# ------------------------------------------------------------------------------------------------- embeddings
@torch.no_grad()
def embed_clips(model: VATTModel, clips: AVClips, *, tokenizer: Any = None, batch_size: int = 64,
                max_text_length: int | None = None, audio: bool = True) -> dict[str, torch.Tensor]:
    """The model's embeddings of ``clips`` (eval mode for the call, restored after), on the CPU.

    Returns ``video_pooled [N, C]``, ``video_va``, ``video_vt``, ``video_tokens [N]`` (tokens each clip kept), with
    ``audio`` and audio in the clips ``audio_pooled``, ``audio_va``, and with a ``tokenizer`` (:class:`mmtok.text.
    TextTokenizer`) and captions ``text_vt [M, vt_dim]`` and ``text_clip [M]`` (each caption's clip).
    """
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {}
    use_audio = audio and clips.audio is not None
    samples = model.usable_audio_length(clips.audio.shape[1]) if use_audio else 0
    with eval_mode(model):
        for start in range(0, len(clips), batch_size):
            index = slice(start, start + batch_size)
            res = model(pixel_values=clips.video(index).to(device),
                        input_values=clips.audio[index, :samples].to(device) if use_audio else None,
                        return_loss=False)
            fields = {"video_pooled": res.video_pooled, "video_va": res.video_va, "video_vt": res.video_vt,
                      "video_tokens": res.video_num_tokens}
            if use_audio:
                fields.update(audio_pooled=res.audio_pooled, audio_va=res.audio_va)
            for key, value in fields.items():
                out.setdefault(key, []).append(value.cpu())
        if tokenizer is not None:
            texts = [(i, c) for i, caps in enumerate(clips.captions) for c in caps]
            for start in range(0, len(texts), batch_size):
                part = texts[start:start + batch_size]
                ids, mask = pad_text_ids(tokenizer.encode_batch([c for _, c in part]), max_length=max_text_length,
                                         device=device)
                out.setdefault("text_vt", []).append(model.embed_text(ids, mask).cpu())
                out.setdefault("text_clip", []).append(torch.tensor([i for i, _ in part]))
    return {k: torch.cat(v) for k, v in out.items()}


def retrieval_scores(embeddings: Mapping[str, torch.Tensor], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """R@k and median rank of ``t2v`` / ``v2t`` (when captions were embedded) and ``v2a`` / ``a2v`` (when audio was),
    from :func:`embed_clips`' output. A caption queries once; a video's positives are all its captions."""
    ks = tuple(ks)
    out: dict[str, float] = {}

    def add(name: str, similarity: torch.Tensor, positives: torch.Tensor | None) -> None:
        out.update({f"{name}/{k}": v for k, v in retrieval_metrics(similarity, positives, ks).items()})

    if "audio_va" in embeddings:
        v, a = embeddings["video_va"].float(), embeddings["audio_va"].float()
        add("v2a", v @ a.T, None)
        add("a2v", a @ v.T, None)
    if "text_vt" in embeddings:
        v, t = embeddings["video_vt"].float(), embeddings["text_vt"].float()
        owner = embeddings["text_clip"]
        positives = owner[None, :] == torch.arange(v.shape[0])[:, None]                   # [N, M]
        captioned = positives.any(dim=1)                                                  # videos with a caption
        add("t2v", t @ v.T, positives.T)
        add("v2t", v[captioned] @ t.T, positives[captioned])
    return out


# --------------------------------------------------------------------------------------------- linear probes
class ProbeResult(NamedTuple):
    """What :func:`linear_probe` measured. ``train_accuracy`` says whether the features hold the label at all (a low
    one: they do not; a high one with a low ``accuracy``: the probe overfits); ``confusion[i, j]`` counts test rows of
    class ``i`` predicted as ``j``."""

    accuracy: float
    train_accuracy: float
    chance: float
    confusion: torch.Tensor


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 weight_decay: float = 1e-3, max_iter: int = 200) -> ProbeResult:
    """Accuracy of a linear classifier fitted on frozen features: multinomial logistic regression with an L2
    penalty on standardized features (the train split's mean and std), full-batch L-BFGS in float64.

    Args:
        train_x, test_x: ``[N, D]`` features; train_y, test_y: ``[N]`` class indices (>= 0).
        weight_decay: L2 weight on the weights (not the biases).
        max_iter: L-BFGS iterations.

    Returns:
        :class:`ProbeResult`: test and train accuracy, the accuracy of always answering the train split's most
        frequent class, and the test confusion matrix ``[classes, classes]`` (int64).
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError("one label per feature row is needed")
    if train_x.shape[0] < 2 or test_x.shape[0] < 1:
        raise ValueError(f"a linear probe needs >= 2 train and >= 1 test rows, got {train_x.shape[0]} and "
                         f"{test_x.shape[0]}")
    if int(train_y.min()) < 0 or int(test_y.min()) < 0:
        raise ValueError("class indices must be >= 0")
    mean, std = train_x.double().mean(0), train_x.double().std(0).clamp_min(1e-6)
    x, xt = (train_x.double() - mean) / std, (test_x.double() - mean) / std
    y, yt = train_y.long(), test_y.long()
    classes = int(max(y.max(), yt.max())) + 1
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        predicted, train_predicted = (xt @ weight + bias).argmax(1), (x @ weight + bias).argmax(1)
    confusion = torch.bincount(yt * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    majority = int(torch.bincount(y).argmax())
    return ProbeResult(accuracy=float((predicted == yt).double().mean()),
                       train_accuracy=float((train_predicted == y).double().mean()),
                       chance=float((yt == majority).double().mean()), confusion=confusion)


# ---------------------------------------------------------------------------------------------------- report
def evaluate_vatt(model: VATTModel, test: AVClips, *, tokenizer: Any = None, probe_train: AVClips | None = None,
                  labels: Mapping[str, Mapping[str, int]] | None = None,
                  label_modalities: Mapping[str, str] | None = None, batch_size: int = 64,
                  ks: Sequence[int] = (1, 5), max_text_length: int | None = None) -> dict[str, float]:
    """Zero-shot retrieval on ``test`` and linear probes fitted on ``probe_train``, as one flat dict.

    Args:
        test: the evaluation clips (their captions are the text queries when a ``tokenizer`` is given).
        probe_train: clips the probes are fitted on (the train split); ``None`` or no ``labels``: no probes.
        labels: ``{label: {clip id: class}}``; clips without a class for a label are left out of its probe.
        label_modalities: ``{label: "video" | "audio"}``, whose pooled embedding the probe reads (default video).

    Returns:
        ``num_test_clips``, ``video_tokens_per_clip`` (mean kept), ``chance/R@k`` (``min(1, k / N)``), the
        :func:`retrieval_scores` (``t2v/R@1`` ...; ``num_test_captions`` with captions), and per label
        ``probe/<label>`` with ``probe/<label>_chance`` and ``probe/<label>_train`` (the probe's accuracy on the
        clips it was fitted on: low when the features lack the label) (plus ``num_probe_train_clips``).
    """
    emb = embed_clips(model, test, tokenizer=tokenizer, batch_size=batch_size, max_text_length=max_text_length)
    n = len(test)
    out: dict[str, float] = {"num_test_clips": float(n),
                             "video_tokens_per_clip": float(emb["video_tokens"].float().mean())}
    out.update({f"chance/R@{k}": min(1.0, k / n) for k in ks})
    if "text_vt" in emb:
        out["num_test_captions"] = float(emb["text_vt"].shape[0])
    out.update(retrieval_scores(emb, ks))
    if probe_train is not None and labels:
        train_emb = embed_clips(model, probe_train, batch_size=batch_size)
        out["num_probe_train_clips"] = float(len(probe_train))
        for name, classes in labels.items():
            key = f"{(label_modalities or {}).get(name, 'video')}_pooled"
            if key not in emb or key not in train_emb:
                continue
            tr = [i for i, cid in enumerate(probe_train.ids) if cid in classes]
            te = [i for i, cid in enumerate(test.ids) if cid in classes]
            if len(tr) < 2 or not te:
                continue
            result = linear_probe(train_emb[key][tr], torch.tensor([classes[probe_train.ids[i]] for i in tr]),
                                  emb[key][te], torch.tensor([classes[test.ids[i]] for i in te]))
            out[f"probe/{name}"], out[f"probe/{name}_chance"] = result.accuracy, result.chance
            out[f"probe/{name}_train"] = result.train_accuracy
    return out


# ---------------------------------------------------------------------------------------------------- export
def save_clip_config(folder: str | os.PathLike, cfg: ClipConfig) -> Path:
    """Record beside an export how its clips were decoded (``clip_config.json``: fps, num_frames, size,
    sample_rate), so evaluation and benchmarks decode new clips the same way."""
    fields = {k: getattr(cfg, k) for k in ("fps", "num_frames", "size", "sample_rate")}
    return atomic_write(Path(folder) / CLIP_CONFIG_FILE, json.dumps(fields, indent=1) + "\n")


def load_vatt_export(folder: str | os.PathLike, *, video_switches: Mapping[str, Any] | None = None
                     ) -> tuple[VATTModel, Any, ClipConfig]:
    """``(model, text tokenizer, clip config)`` of a ``recipes/train_vatt.py`` export (the model in eval mode;
    ``video_switches`` as :meth:`VATTModel.from_pretrained`)."""
    from mmtok.text import TextTokenizer

    folder = Path(folder)
    clip_file = folder / CLIP_CONFIG_FILE
    if not clip_file.is_file():
        raise FileNotFoundError(f"{clip_file} is missing: not a recipes/train_vatt.py export")
    model = VATTModel.from_pretrained(folder, video_switches=video_switches).eval()
    return model, TextTokenizer.from_pretrained(folder), ClipConfig(**json.loads(clip_file.read_text()))
