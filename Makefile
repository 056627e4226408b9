# flowopd, two commands from nothing:
#   make demo   set up .venv if missing, then run the main job on the mini default
#   make test   set up .venv if missing, then run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flowopd-installed
DEMO ?= runs/demo

.PHONY: install demo test test-slow bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flowopd sample --prompt "a photo of two red squares" --n 8 --out $(DEMO)/two-red-squares.png
	$(BIN)/flowopd eval --suite all --out $(DEMO)/eval
	$(BIN)/flowopd report $(DEMO)/eval --out $(DEMO)/report.md
	@cat $(DEMO)/report.md

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python tests/bench/cli_startup.py
	$(BIN)/python tests/bench/mini_throughput.py
	$(BIN)/python tests/bench/grpo_step.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info runs
