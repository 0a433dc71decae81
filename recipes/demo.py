"""The end-to-end demo: corpus -> tokenizers -> token shards -> LM -> generation -> evaluation -> a web page.

    python recipes/demo.py --config recipes/configs/demo.yaml                 # what `make demo` runs
    python recipes/demo.py --config recipes/configs/demo.yaml --from pretrain --force   # redo from a stage on
    python recipes/demo.py --config recipes/configs/demo.yaml --stages evaluate,page --force
    python recipes/demo.py --config recipes/configs/demo_debug.yaml out=/tmp/demo   # seconds-sized (tests)

Stages, in order (each writes ``<out>/stages/<stage>.done`` last, after checking its outputs exist; a stage whose
marker and outputs exist is skipped, ``--force`` redoes the selected stages, ``--stages a,b`` / ``--from s`` select;
once a stage has run, every later selected stage is redone too, since its inputs changed):

==================  =====================================================  =====================================
stage               what                                                   output under ``out``
==================  =====================================================  =====================================
corpus              ``data/moving_digits.py`` (the embedded corpus)        ``corpus/`` (manifest, ground truth)
text_tokenizer      SentencePiece on the train split's captions            ``text_tokenizer/``
video_tokenizer     ``recipes/train_video_tokenizer.py``                    ``video_tokenizer/export/``
audio_tokenizer     ``recipes/train_audio_tokenizer.py``                    ``audio_tokenizer/export/``
bundle              ``MultimodalTokenizer`` of the three, saved            ``tokenizer/``
tokenize            ``recipes/tokenize_dataset.py``                         ``tokens/``
pretrain            ``recipes/pretrain.py`` on the task mixture             ``lm/export/`` (LM + bundle)
generate            ``recipes/generate.py t2v`` for ``generate.prompts``    ``generated/*.gif``
evaluate            ``recipes/evaluate.py``: t2v (seen and held-out            ``eval/metrics.json``, ``metrics.md``,
                    combinations), v2a and continuation on test clips,     ``samples/``
                    tokenizer reconstruction, per-task LM losses
page                ``recipes/demo_page.py``                                ``index.html``, ``plots/*.png``
==================  =====================================================  =====================================

Training stages run as subprocesses of the recipe CLIs (their logs and progress bars stream to the console and to
``<out>/logs/<stage>.log``); an interrupted training stage resumes from its latest checkpoint on the next run. Each
stage's settings are the recipe's own YAML plus the dotted ``overrides`` listed in the demo config (that is where the
time budget lives; see ``recipes/configs/demo.yaml``). The three trainers' run folders share one layout: each exports
to ``<run>/export/`` (``export_dir``, which the demo passes). ``<out>/stages.json`` records every stage's wall-clock
time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent

from mmtok.io import atomic_output, atomic_write
from recipes.common import build_arg_parser, load_config

STAGES = ("corpus", "text_tokenizer", "video_tokenizer", "audio_tokenizer", "bundle", "tokenize", "pretrain",
          "generate", "evaluate", "page")


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class CorpusSettings:
    num_clips: int = 2000
    seed: int = 0
    size: int = 32
    glyph_size: Optional[int] = None          # glyph box side in pixels (None: half the frame)
    num_frames: int = 9
    fps: int = 8
    glyphs_per_digit: Optional[int] = None    # handwritten samples per digit (None: all)
    position_grid: Optional[int] = None       # glyph positions on this pixel grid (None: anywhere)
    frames_per_grid_step: int = 2             # with position_grid: 2 = half a grid step per frame, 1 = a whole one
    clear_steps: int = 2                      # frames the glyph moves before its first bounce
    crf: Optional[int] = None                 # H.264 quality of the clips (0: lossless; None: the corpus default)
    partial_captions: int = 0                 # captions naming only part of a training clip's content
    workers: Optional[int] = None             # processes (None: CPU count)


@dataclass
class TextSettings:
    vocab_size: int = 256
    model_type: str = "bpe"


@dataclass
class RecipeStage:
    """A recipe run as a subprocess: its YAML plus dotted overrides (paths are filled in by the demo)."""

    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class BundleSettings:
    num_audio_levels: Optional[int] = 4       # RVQ levels the LM models (VideoPoet: 4); None = all
    audio_pattern: str = "frame_major"


@dataclass
class GenerateSettings:
    prompts: list[str] = field(default_factory=lambda: ["a red seven drifts up and to the left"])
    args: list[str] = field(default_factory=lambda: ["--top-k", "50", "--seed", "0"])


@dataclass
class DemoConfig:
    out: str = "outputs/demo"
    title: str = "mmtok demo: Moving Digits"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    text: TextSettings = field(default_factory=TextSettings)
    video_tokenizer: RecipeStage = field(
        default_factory=lambda: RecipeStage("recipes/configs/video_tokenizer_demo.yaml"))
    audio_tokenizer: RecipeStage = field(
        default_factory=lambda: RecipeStage("recipes/configs/audio_tokenizer_demo.yaml"))
    bundle: BundleSettings = field(default_factory=BundleSettings)
    tokenize: RecipeStage = field(default_factory=lambda: RecipeStage("recipes/configs/tokenize_demo.yaml"))
    pretrain: RecipeStage = field(default_factory=lambda: RecipeStage("recipes/configs/pretrain_demo.yaml"))
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    evaluate: RecipeStage = field(default_factory=lambda: RecipeStage("recipes/configs/evaluate_demo.yaml"))
    budget_minutes: dict[str, float] = field(default_factory=dict)   # shown beside the measured times
    wall_minutes: float = 25.0   # the whole demo's wall-time budget on the page's targets table
    wall_reason: str = ""        # why, when wall_minutes is raised above 25 (shown under the table)


class StageError(RuntimeError):
    """A stage failed (its command's exit status, and where its log is)."""


# ------------------------------------------------------------------------------------------------------ paths
class Layout:
    """Where each stage writes, under ``out`` (a trainer's result in its run folder's ``export/``)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.corpus = self.out / "corpus"
        self.text = self.out / "text_tokenizer"
        self.video_run = self.out / "video_tokenizer"
        self.video = self.video_run / "export"
        self.audio_run = self.out / "audio_tokenizer"
        self.audio = self.audio_run / "export"
        self.bundle = self.out / "tokenizer"
        self.tokens = self.out / "tokens"
        self.lm_run = self.out / "lm"
        self.export = self.lm_run / "export"
        self.generated = self.out / "generated"
        self.eval = self.out / "eval"
        self.page = self.out / "index.html"
        self.stages = self.out / "stages"
        self.logs = self.out / "logs"

    def outputs(self, stage: str) -> list[Path]:
        """Files whose presence (with the marker) means ``stage`` is done."""
        return {
            "corpus": [self.corpus / "corpus.json", self.corpus / "ground_truth.jsonl"],
            "text_tokenizer": [self.text / "text.model"],
            "video_tokenizer": [self.video / "config.json"],
            "audio_tokenizer": [self.audio / "config.json"],
            "bundle": [self.bundle / "multimodal_tokenizer.json"],
            "tokenize": [self.tokens / "dataset.json"],
            "pretrain": [self.export / "config.json"],
            "generate": [self.generated / "prompts.json"],
            "evaluate": [self.eval / "metrics.json"],
            "page": [self.page],
        }[stage]

    def run_dir(self, stage: str) -> Path | None:
        """The folder ``--force`` clears before redoing ``stage``."""
        return {"corpus": self.corpus, "text_tokenizer": self.text, "video_tokenizer": self.video_run,
                "audio_tokenizer": self.audio_run, "bundle": self.bundle, "tokens": self.tokens,
                "tokenize": self.tokens, "pretrain": self.lm_run, "generate": self.generated,
                "evaluate": self.eval}.get(stage)


# ------------------------------------------------------------------------------------------------ subprocesses
def _python() -> str:
    return sys.executable


def run_command(cmd: Sequence[str], log_path: Path, *, cwd: Path = REPO) -> None:
    """Run ``cmd``, streaming its output (progress bars included) to the console and to ``log_path``.

    Raises :class:`StageError` naming the command and the log on a non-zero exit status.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    printable = " ".join(str(c) for c in cmd)
    print(f"$ {printable}", flush=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {printable}\n".encode())
        proc = subprocess.Popen([str(c) for c in cmd], cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        out = getattr(sys.stdout, "buffer", None)
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            log.write(chunk)
            if out is not None:
                out.write(chunk)
                out.flush()
            else:
                sys.stdout.write(chunk.decode(errors="replace"))
        status = proc.wait()
    if status != 0:
        raise StageError(f"command failed with exit status {status}: {printable}\n  log: {log_path}")


def _recipe(name: str) -> str:
    return str(REPO / "recipes" / name)


def _config_args(stage: RecipeStage) -> list[str]:
    if not stage.config:
        return []
    path = Path(stage.config)
    path = path if path.is_absolute() else REPO / path
    if not path.is_file():
        raise FileNotFoundError(f"stage config not found: {path}")
    return ["--config", str(path)]


def _resume_flag(run_dir: Path) -> list[str]:
    """``--resume`` when an interrupted run left a checkpoint (the recipes continue exactly)."""
    return ["--resume"] if (run_dir / "checkpoints" / "latest").is_file() else []


# ------------------------------------------------------------------------------------------------------ stages
class Demo:
    """Runs the stages of :data:`STAGES` for a :class:`DemoConfig`."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.paths = Layout(cfg.out)

    # -------------------------------------------------------------------------------------- stage bodies
    def corpus(self) -> None:
        c = self.cfg.corpus
        cmd = [_python(), str(REPO / "data" / "moving_digits.py"), "--out", self.paths.corpus,
               "--num-clips", c.num_clips, "--seed", c.seed, "--size", c.size, "--num-frames", c.num_frames,
               "--fps", c.fps, "--frames-per-grid-step", c.frames_per_grid_step, "--clear-steps", c.clear_steps]
        if c.glyph_size is not None:
            cmd += ["--glyph-size", c.glyph_size]
        if c.glyphs_per_digit is not None:
            cmd += ["--glyphs-per-digit", c.glyphs_per_digit]
        if c.position_grid is not None:
            cmd += ["--position-grid", c.position_grid]
        if c.crf is not None:
            cmd += ["--crf", c.crf]
        if c.partial_captions:
            cmd += ["--partial-captions", c.partial_captions]
        if c.workers is not None:
            cmd += ["--workers", c.workers]
        run_command(cmd, self.log("corpus"))

    def text_tokenizer(self) -> None:
        from mmtok.text import TextTokenizer

        captions = []
        with open(self.paths.corpus / "manifest.jsonl") as f:
            for line in f:
                rec = json.loads(line) if line.strip() else None
                if rec and rec.get("split") == "train":
                    captions += rec.get("captions") or [rec["caption"]]
        if not captions:
            raise StageError("the corpus has no train captions to train the text tokenizer on")
        print(f"text_tokenizer: SentencePiece {self.cfg.text.model_type}, vocab {self.cfg.text.vocab_size}, on "
              f"{len(captions)} train captions", flush=True)
        tok = TextTokenizer.train(captions, vocab_size=self.cfg.text.vocab_size, model_type=self.cfg.text.model_type)
        with atomic_output(self.paths.text) as tmp:
            tok.save_pretrained(tmp)

    def video_tokenizer(self) -> None:
        s, p = self.cfg.video_tokenizer, self.paths
        cmd = [_python(), _recipe("train_video_tokenizer.py"), *_config_args(s), *_resume_flag(p.video_run),
               f"run_dir={p.video_run}", f"export_dir={p.video}", f"data.source={p.corpus / 'manifest.jsonl'}",
               f"data.size={self.cfg.corpus.size}", f"data.num_frames={self.cfg.corpus.num_frames}",
               f"data.fps={self.cfg.corpus.fps}", *s.overrides]
        run_command(cmd, self.log("video_tokenizer"))

    def audio_tokenizer(self) -> None:
        s, p = self.cfg.audio_tokenizer, self.paths
        cmd = [_python(), _recipe("train_audio_tokenizer.py"), *_config_args(s), *_resume_flag(p.audio_run),
               f"run_dir={p.audio_run}", f"export_dir={p.audio}", f"data.manifest={p.corpus / 'manifest.jsonl'}",
               *s.overrides]
        run_command(cmd, self.log("audio_tokenizer"))

    def bundle(self) -> None:
        from mmtok.audio import AudioTokenizer
        from mmtok.multimodal import MultimodalTokenizer
        from mmtok.text import TextTokenizer
        from mmtok.video import VideoTokenizer

        p = self.paths
        video = VideoTokenizer.from_pretrained(p.video).eval()
        audio = AudioTokenizer.from_pretrained(p.audio).eval()
        text = TextTokenizer.from_pretrained(p.text)
        side = self.cfg.corpus.size // int(video.spatial_factor)
        bundle = MultimodalTokenizer(text=text, video=video, audio=audio,
                                     num_audio_levels=self.cfg.bundle.num_audio_levels,
                                     audio_pattern=self.cfg.bundle.audio_pattern, latent_hw=(side, side))
        with atomic_output(p.bundle) as tmp:
            bundle.save_pretrained(tmp)
        print(f"bundle: {bundle!r}", flush=True)

    def tokenize(self) -> None:
        s, p = self.cfg.tokenize, self.paths
        cmd = [_python(), _recipe("tokenize_dataset.py"), *_config_args(s), f"data={p.corpus / 'manifest.jsonl'}",
               f"tokenizer={p.bundle}", f"out={p.tokens}", f"size={self.cfg.corpus.size}",
               f"num_frames={self.cfg.corpus.num_frames}", f"fps={self.cfg.corpus.fps}", *s.overrides]
        run_command(cmd, self.log("tokenize"))

    def pretrain(self) -> None:
        s, p = self.cfg.pretrain, self.paths
        cmd = [_python(), _recipe("pretrain.py"), *_config_args(s), *_resume_flag(p.lm_run), f"run_dir={p.lm_run}",
               f"export_dir={p.export}", "data.source=shards", f"data.shards={p.tokens}", f"data.bundle={p.bundle}",
               *s.overrides]
        run_command(cmd, self.log("pretrain"))

    def generate(self) -> None:
        p = self.paths
        p.generated.mkdir(parents=True, exist_ok=True)
        entries = []
        for i, prompt in enumerate(self.cfg.generate.prompts):
            out = p.generated / f"prompt_{i}.gif"
            cmd = [_python(), _recipe("generate.py"), "t2v", "--model", p.export, "--prompt", prompt, "--out", out,
                   "--clip-frames", self.cfg.corpus.num_frames, *self.cfg.generate.args]
            run_command(cmd, self.log("generate"))
            entries.append({"prompt": prompt, "gif": out.name})
        atomic_write(p.generated / "prompts.json", json.dumps(entries, indent=1))

    def evaluate(self, force: bool = False) -> None:
        s, p = self.cfg.evaluate, self.paths
        cmd = [_python(), _recipe("evaluate.py"), *_config_args(s), f"model={p.export}", f"corpus={p.corpus}",
               f"out={p.eval}", f"shards={p.tokens}", *s.overrides]
        if force:
            cmd.append("--force")
        run_command(cmd, self.log("evaluate"))

    def page(self) -> None:
        from recipes.demo_page import write_page

        path = write_page(self.paths.out, title=self.cfg.title, wall_minutes=self.cfg.wall_minutes,
                          wall_reason=self.cfg.wall_reason)
        print(f"page: wrote {path}", flush=True)

    # ----------------------------------------------------------------------------------------- driver
    def log(self, stage: str) -> Path:
        return self.paths.logs / f"{stage}.log"

    def marker(self, stage: str) -> Path:
        return self.paths.stages / f"{stage}.done"

    def is_done(self, stage: str) -> bool:
        return self.marker(stage).is_file() and all(f.exists() for f in self.paths.outputs(stage))

    def run(self, stages: Sequence[str], force: bool = False) -> dict[str, Any]:
        """Run ``stages`` in pipeline order; returns ``{stage: {"seconds", "skipped"}}`` (also in stages.json)."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        self.paths.out.mkdir(parents=True, exist_ok=True)
        record_path = self.paths.out / "stages.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        total = time.time()
        dirty = False  # an earlier stage ran: later stages' cached outputs are stale
        for stage in [s for s in STAGES if s in stages]:
            redo = force or dirty
            if self.is_done(stage) and not redo:
                print(f"==> {stage}: done (skipped; {self.marker(stage)} exists; --force redoes)", flush=True)
                record.setdefault(stage, {})["skipped"] = True
                continue
            print(f"==> {stage}", flush=True)
            self.marker(stage).unlink(missing_ok=True)
            if redo and stage not in ("evaluate", "page"):
                d = self.paths.run_dir(stage)
                if d is not None and d.exists():
                    shutil.rmtree(d)
            t = time.time()
            body: Callable[..., None] = getattr(self, stage)
            body(force=redo) if stage == "evaluate" else body()
            dirty = True
            missing = [str(f) for f in self.paths.outputs(stage) if not f.exists()]
            if missing:
                raise StageError(f"stage {stage} finished without writing {missing}")
            seconds = round(time.time() - t, 1)
            record[stage] = {"seconds": seconds, "skipped": False,
                             "budget_minutes": self.cfg.budget_minutes.get(stage)}
            atomic_write(record_path, json.dumps(record, indent=1))
            atomic_write(self.marker(stage), json.dumps({"stage": stage, "seconds": seconds,
                                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
            print(f"==> {stage}: {seconds} s", flush=True)
        atomic_write(record_path, json.dumps(record, indent=1))
        print(f"demo: {round(time.time() - total, 1)} s; page: {self.paths.page}", flush=True)
        return record


def select_stages(stages: str | None, start: str | None) -> list[str]:
    """Stages from ``--stages a,b`` and/or ``--from s`` (default: all)."""
    chosen = list(STAGES)
    if stages:
        chosen = [s.strip() for s in stages.split(",") if s.strip()]
        bad = [s for s in chosen if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; stages are {list(STAGES)}")
    if start:
        if start not in STAGES:
            raise ValueError(f"--from {start!r}: unknown stage; stages are {list(STAGES)}")
        chosen = [s for s in chosen if STAGES.index(s) >= STAGES.index(start)]
    return chosen


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_arg_parser("Run the mmtok end-to-end demo (every stage cached).")
    parser.add_argument("--force", action="store_true", help="redo the selected stages even when done")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--from", dest="start", default=None, help="run from this stage on")
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config, args.overrides)
    stages = select_stages(args.stages, args.start)
    return Demo(cfg).run(stages, force=args.force)


if __name__ == "__main__":
    try:
        main()
    except (StageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
