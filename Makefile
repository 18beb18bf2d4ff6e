# make demo / make test create .venv when missing and install the project into it.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# This machine's wheels (local disk); pyproject.toml itself only declares ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torchcodec needs the system FFmpeg libraries; install them when missing and we can.
	@if ! command -v ffmpeg >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
			|| echo "warning: could not install ffmpeg; decoding falls back to PyAV"; \
		else echo "note: no system FFmpeg; decoding uses PyAV (slower). Install ffmpeg for torchcodec."; fi; \
	fi
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS) 2>&1 | (grep -v "is ignored" || true)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]" $(TORCH_PINS) 2>&1 | (grep -v "is ignored" || true)
	$(BIN)/python -c "import cmae, torch, torchvision; print('cmae installed; torch', torch.__version__)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cmae demo --output runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
