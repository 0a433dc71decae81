"""The demo's web page: ``<out>/index.html`` with generated clips beside the ground truth first, then the targets
with their 95% intervals and tokenizer ceilings, the full metric list, the training curves and the stage times.

A helper of ``recipes/demo.py`` (its ``page`` stage), not a script: to rewrite a demo's page from what it wrote,
``python recipes/demo.py --config recipes/configs/demo.yaml --stages page --force``.

Reads (every part optional; a missing part is named on the page instead of failing): ``eval/metrics.json`` and
``eval/samples.json`` (``recipes/evaluate.py``), ``generated/prompts.json`` (free prompts), ``stages.json`` (stage
times), and each run folder's ``metrics.jsonl`` (``video_tokenizer/``, ``audio_tokenizer/``, ``lm/``), plotted with
matplotlib into ``plots/<run>.png``. Media are linked by relative paths, so the folder can be copied or served as is.

The page carries a small script that waits until every ``<img>``, ``<video>`` and ``<audio>`` has loaded (or failed)
and then sets ``data-media-loaded`` / ``data-media-failed`` / ``data-media-total`` on ``<body>`` and the text of
``#media-status``: the headless-Chromium test reads them from the rendered DOM.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from mmtok.io import atomic_output, atomic_write
from mmtok.metrics import format_interval, format_value
from recipes.common import read_metrics

RUNS = (("video_tokenizer", "Video tokenizer"), ("audio_tokenizer", "Audio tokenizer"), ("lm", "Token LM"))
_CURVE_HINTS = ("loss", "psnr", "si_snr", "nll", "perplexity", "utilization")

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 14px; }
th { background: #f2f2f2; }
.no { color: #b00; font-weight: bold; } .yes { color: #070; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 360px; }
.pair { display: flex; gap: 8px; }
.pair figure { margin: 0; text-align: center; font-size: 12px; }
.media { width: 160px; height: 160px; image-rendering: pixelated; background: #000; }
audio { width: 170px; }
.caption { font-size: 13px; margin: 4px 0; }
.plots img { max-width: 100%; }
"""

SCRIPT = """
(function () {
  function settle() {
    var els = Array.prototype.slice.call(document.querySelectorAll('img, video, audio'));
    var loaded = 0, failed = 0;
    els.forEach(function (e) {
      if (e.tagName === 'IMG') {
        if (e.complete) { if (e.naturalWidth > 0) loaded++; else failed++; }
      } else if (e.error) { failed++; }
      else if (e.readyState >= 2) { loaded++; }
    });
    var b = document.body;
    b.setAttribute('data-media-total', els.length);
    b.setAttribute('data-media-loaded', loaded);
    b.setAttribute('data-media-failed', failed);
    var s = document.getElementById('media-status');
    if (loaded + failed >= els.length) {
      s.textContent = 'media: ' + loaded + ' of ' + els.length + ' loaded, ' + failed + ' failed';
      b.setAttribute('data-media-done', '1');
    } else {
      s.textContent = 'media: loading (' + loaded + ' of ' + els.length + ')';
      setTimeout(settle, 100);
    }
  }
  window.addEventListener('load', settle);
})();
"""


# ------------------------------------------------------------------------------------------------------- plots
def plot_run(run_dir: Path, out_png: Path, title: str) -> Path | None:
    """One PNG of a run's training curves (``metrics.jsonl``: every loss / PSNR / SI-SNR-like key against step)."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "time") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not any(h in k.lower() for h in _CURVE_HINTS) or not math.isfinite(v):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(r.get("step", len(xs)))
            ys.append(float(v))
    keys = sorted(series, key=lambda k: (-len(series[k][0]), k))[:8]
    if not keys:
        return None
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        xs, ys = series[k]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if "loss" in k and min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return out_png


# ------------------------------------------------------------------------------------------------------- html
def _e(x: Any) -> str:
    return html.escape(str(x))


def metrics_html(doc: dict[str, Any]) -> str:
    """The full metric list: value, 95% interval, baseline, the probe on ground truth, n."""
    rows = ["<table><tr><th>metric</th><th>model</th><th>95% interval</th><th>baseline</th>"
            "<th>probe on ground truth</th><th>n</th><th>beats baseline</th></tr>"]
    for m in doc.get("metrics", []):
        beats = m.get("beats_baseline")
        cls, word = {True: ("yes", "yes"), False: ("no", "no"), None: ("", "n/a")}[beats]
        arrow = "&uarr;" if m.get("higher_is_better", True) else "&darr;"
        rows.append(f"<tr><td>{_e(m['name'])} {arrow}</td><td>{_e(format_value(m, m['value']))}</td>"
                    f"<td>{_e(format_interval(m))}</td>"
                    f"<td>{_e(format_value(m, m['baseline']))} <small>({_e(m['baseline_name'])})</small></td>"
                    f"<td>{_e(format_value(m, m.get('reference')))}</td><td>{m.get('n', '')}</td>"
                    f"<td class='{cls}'>{word}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


# The demo's targets (issue 13): (label, metric, comparison, target, ceiling metric). ``"baseline"`` as the target
# means "better than the metric's own baseline" (copy-last-frame for continuation).
TARGETS: tuple[tuple[str, str, str, float | str, str | None], ...] = (
    *((f"video tokenizer ceiling: {k}", f"tokenizer_recon/{k}_accuracy", ">=", 0.95, None)
      for k in ("digit", "color", "direction")),
    *((f"t2v {label}: {k}", f"{prefix}/{k}_accuracy", ">=", 0.8, f"tokenizer_recon/{k}_accuracy")
      for prefix, label in (("t2v", "seen combinations"), ("t2v_held_out", "held-out combinations"),
                            ("t2v_phrasing", "held-out phrasings"))
      for k in ("digit", "color", "direction")),
    ("v2a pitch", "v2a/pitch_accuracy", ">=", 0.8, "tokenizer_recon/pitch_accuracy"),
    ("v2a bounce-click F1", "v2a/click_f1", ">=", 0.7, "tokenizer_recon/click_f1"),
    ("continuation PSNR", "continuation/psnr", ">", "baseline", None),
    ("continuation trajectory error", "continuation/trajectory_error", "<", "baseline", None),
    ("zero-shot text->video R@1", "align/t2v_R@1", ">=", 0.25, None),
)


def targets_html(doc: dict[str, Any], stages: dict[str, Any], budget_minutes: float = 25.0,
                 budget_reason: str = "") -> str:
    """The short table: each target, this run's figure with its 95% interval, the tokenizer ceiling, and whether it
    holds; then the demo's wall time against its budget, with the measured reason when the budget is raised."""
    by = {m["name"]: m for m in doc.get("metrics", [])}
    rows = ["<table><tr><th>target</th><th>this run</th><th>95% interval</th><th>needed</th>"
            "<th>tokenizer ceiling</th><th>holds</th></tr>"]
    for label, name, op, target, ceiling in TARGETS:
        m = by.get(name)
        if m is None or m.get("value") is None:
            continue
        goal = m["baseline"] if target == "baseline" else target
        value = m["value"]
        holds = {">=": value >= goal, ">": value > goal, "<": value < goal}[op]
        need = f"{op} {format_value(m, goal)}" + (f" ({m['baseline_name']})" if target == "baseline" else "")
        ceil = by.get(ceiling) if ceiling else None
        rows.append(f"<tr><td>{_e(label)}</td><td>{_e(format_value(m, value))}</td><td>{_e(format_interval(m))}</td>"
                    f"<td>{_e(need)}</td><td>{_e(format_value(ceil, ceil['value']) if ceil else '')}</td>"
                    f"<td>{_mark(holds)}</td></tr>")
    total = sum(r.get("seconds") or 0.0 for r in stages.values())
    if total:
        rows.append(f"<tr><td>demo wall time (stages.json)</td><td>{total / 60:.1f} min</td><td></td>"
                    f"<td>&lt;= {budget_minutes:g} min</td><td></td><td>{_mark(total <= 60 * budget_minutes)}</td></tr>")
    rows.append("</table>")
    if budget_reason:
        rows.append(f"<p>Wall-time budget {budget_minutes:g} minutes: {_e(budget_reason)}</p>")
    return "\n".join(rows)


def _img(src: str, alt: str) -> str:
    return f"<img class='media' src='{_e(src)}' alt='{_e(alt)}'>"


def _video(src: str) -> str:
    return f"<video class='media' src='{_e(src)}' controls loop muted preload='auto'></video>"


def _audio(src: str) -> str:
    return f"<audio src='{_e(src)}' controls preload='auto'></audio>"


def _mark(ok: bool) -> str:
    return "<span class='yes'>&#10003;</span>" if ok else "<span class='no'>&#10007;</span>"


def samples_html(samples: dict[str, list[dict[str, Any]]], base: str) -> str:
    parts = []
    titles = {"t2v": "Text to video (combinations seen in training)",
              "t2v_held_out": "Text to video (held-out combinations, never seen in training)",
              "t2v_phrasing": "Text to video (prompts in phrasings no training caption uses)",
              "v2a": "Video to audio (test clips; the generated soundtrack muxed with the input video)",
              "continuation": "Continuation (test clips: the model sees the first frames and continues)"}
    for task, title in titles.items():
        recs = [r for r in samples.get(task, []) if r.get("gif") or r.get("wav")]
        if not recs:
            continue
        cards = []
        for r in recs:
            truth = f"{base}/{r['truth_gif']}" if r.get("truth_gif") else None
            if task.startswith("t2v"):
                c = r["correct"]
                head = (f"<div class='caption'>&ldquo;{_e(r['prompt'])}&rdquo;</div><div class='caption'>probe reads: "
                        f"digit {r['digit']} {_mark(c['digit'])}, {_e(r['color'])} {_mark(c['color'])}, "
                        f"{_e(r['direction'])} {_mark(c['direction'])}</div>")
                gif, mp4 = f"{base}/{r['gif']}", f"{base}/{r['mp4']}"
                gen = f"<figure>{_img(gif, 'generated')}<figcaption>generated (GIF)</figcaption>" \
                      f"</figure><figure>{_video(mp4)}<figcaption>generated (MP4)</figcaption></figure>"
                gt = f"<figure>{_img(truth, 'ground truth')}<figcaption>ground-truth clip of this caption</figcaption></figure>" \
                    if truth else ""
                cards.append(f"<div class='card'>{head}<div class='pair'>{gen}</div><div class='pair'>{gt}</div></div>")
            elif task == "v2a":
                head = (f"<div class='caption'>{_e(r['id'])}: true digit {r['truth']['digit']}, probe reads pitch "
                        f"digit {r['digit']} {_mark(r['correct']['digit'])}; click F1 {r['click_f1']:.2f}</div>")
                mp4, wav = f"{base}/{r['mp4']}", f"{base}/{r['wav']}"
                tmp4, twav = f"{base}/{r['truth_mp4']}", f"{base}/{r['truth_wav']}"
                body = (f"<div class='pair'><figure>{_video(mp4)}<figcaption>video + generated audio"
                        f"</figcaption>{_audio(wav)}</figure>"
                        f"<figure>{_video(tmp4)}<figcaption>ground truth</figcaption>"
                        f"{_audio(twav)}</figure></div>")
                cards.append(f"<div class='card'>{head}{body}</div>")
            else:
                head = (f"<div class='caption'>{_e(r['id'])}: first {r['context_frames']} frames observed; PSNR "
                        f"{r['psnr']:.1f} dB (copy-last {r['psnr_copy_last']:.1f}); trajectory error "
                        f"{r['trajectory_error']:.1f} px (copy-last {r['trajectory_error_copy_last']:.1f})</div>")
                gif = f"{base}/{r['gif']}"
                body = (f"<div class='pair'><figure>{_img(gif, 'continued')}<figcaption>continued"
                        f"</figcaption></figure><figure>{_img(truth, 'ground truth')}<figcaption>ground truth"
                        f"</figcaption></figure></div>")
                cards.append(f"<div class='card'>{head}{body}</div>")
        parts.append(f"<h2>{_e(title)}</h2><div class='grid'>{''.join(cards)}</div>")
    return "\n".join(parts)


def stages_html(record: dict[str, Any]) -> str:
    if not record:
        return "<p>No stage timings recorded.</p>"
    rows = ["<table><tr><th>stage</th><th>seconds (last run)</th><th>budget (min, 2 idle cores)</th></tr>"]
    total = 0.0
    for stage, r in record.items():
        sec = r.get("seconds")
        total += sec or 0.0
        rows.append(f"<tr><td>{_e(stage)}</td><td>{'' if sec is None else sec}</td>"
                    f"<td>{'' if r.get('budget_minutes') is None else r['budget_minutes']}</td></tr>")
    rows.append(f"<tr><th>total</th><th>{total:.0f}</th><th></th></tr></table>")
    return "\n".join(rows)


def write_page(out_dir: str | Path, *, title: str = "mmtok demo", wall_minutes: float = 25.0,
               wall_reason: str = "") -> Path:
    """Write ``<out_dir>/index.html`` (and ``plots/*.png``) from the demo's outputs; returns the page path.

    ``wall_minutes`` is the demo's wall-time budget in the targets table; ``wall_reason`` says why, when it is
    raised above the issue's 25 minutes."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"demo output folder not found: {out}")
    sections = [f"<h1>{_e(title)}</h1>",
                "<p>Every number sits beside its chance or trivial baseline and beside what the probe reads on the "
                "ground truth itself (its ceiling). Generated media are read back by the same probe.</p>",
                "<p id='media-status'>media: loading</p>"]
    prompts_path = out / "generated" / "prompts.json"
    if prompts_path.is_file():
        cards = "".join(f"<div class='card'><div class='caption'>&ldquo;{_e(p['prompt'])}&rdquo;</div>"
                        f"{_img('generated/' + p['gif'], p['prompt'])}</div>"
                        for p in json.loads(prompts_path.read_text()))
        sections.append(f"<h2>Free prompts (recipes/generate.py t2v)</h2><div class='grid'>{cards}</div>")
    samples_path = out / "eval" / "samples.json"
    if samples_path.is_file():
        sections.append(samples_html(json.loads(samples_path.read_text()), "eval/samples"))
    stages_path = out / "stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    metrics_path = out / "eval" / "metrics.json"
    if metrics_path.is_file():
        doc = json.loads(metrics_path.read_text())
        sections.append("<h2>Targets</h2>" + targets_html(doc, stages, wall_minutes, wall_reason))
        sections.append("<h2>Metrics</h2>" + metrics_html(doc))
    else:
        sections.append(f"<h2>Metrics</h2><p>Not evaluated yet ({_e(metrics_path)} is missing).</p>")
    plots = []
    for run, name in RUNS:
        png = plot_run(out / run, out / "plots" / f"{run}.png", f"{name} training")
        if png is not None:
            plots.append(f"<h3>{_e(name)}</h3><img src='plots/{png.name}' alt='{_e(name)} training curves'>")
    sections.append("<h2>Training curves</h2><div class='plots'>" + ("".join(plots) or "<p>No runs yet.</p>")
                    + "</div>")
    sections.append("<h2>Stage times</h2>" + stages_html(stages))
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(sections)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
    path = out / "index.html"
    atomic_write(path, page)
    return path

