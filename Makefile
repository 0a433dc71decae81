# mmtok: one-command setup, tests and demo. Everything installs into .venv from nothing.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test demo bench clean

setup: $(STAMP)

# The stamp depends on pyproject.toml, so a changed dependency list re-installs; otherwise setup is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: a CPU wheel on these machines (an unpinned torch pulls a multi-GB CUDA build).
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e '.[dev,deepspeed,demo]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# The main job: corpus -> tokenizers -> token shards -> LM -> generation -> evaluation -> outputs/demo/index.html.
# Every stage is cached; pass ARGS=--force to redo them.
demo: setup
	$(PY) recipes/demo.py --config recipes/configs/demo.yaml $(ARGS)

# Benchmarks: peers are optional installs. torch stays pinned; magvit2-pytorch goes in without its torchvision pin.
bench: setup
	$(PIP) install --quiet "$(TORCH)" -e '.[bench]'
	$(PIP) install --quiet --no-deps magvit2-pytorch
	for b in quantizers video_tokenizer audio_tokenizer mmlm data; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) outputs
