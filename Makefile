# flowopd, two commands from nothing:
#   make demo   set up .venv if missing, then run the main job on the mini default (flowopd train opd, eval, report)
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

# the main job: distil the four shipped mini teachers into one student (Flow-OPD, 2.5 min on 2 cores; the whole demo 6 min from a fresh clone),
# then evaluate student and base on held-out prompts and compare them image by image
demo: $(STAMP)
	$(BIN)/flowopd train opd --out $(DEMO)/opd $(if $(wildcard $(DEMO)/opd/run.json),--resume,)
	$(BIN)/flowopd eval --suite all --model $(DEMO)/opd/lora --out $(DEMO)/eval-student
	$(BIN)/flowopd eval --suite all --out $(DEMO)/eval-base
	$(BIN)/flowopd report $(DEMO)/eval-student $(DEMO)/eval-base --baseline $(DEMO)/eval-base --out $(DEMO)/report.md
	$(BIN)/flowopd sample --prompt 'the text "42"' --model $(DEMO)/opd/lora --n 8 --out $(DEMO)/student-text-42.png
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
	$(BIN)/python tests/bench/opd_time.py
	$(BIN)/python tests/bench/opd_memory.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info runs
