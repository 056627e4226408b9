# flowopd, two commands from nothing:
#   make demo   set up .venv if missing, then run the main job on the mini default (flowopd train opd, eval --suite all, report)
#   make test   set up .venv if missing, then run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flowopd-installed
DEMO ?= runs/demo

.PHONY: install demo test test-slow bench lint lint-imports clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# the main job: distil the four shipped mini teachers into one student (Flow-OPD, 3.8 min on 2 cores; the whole demo ~6 min from a
# fresh clone), evaluate student and base on every suite they can run (`flowopd eval --suite all`), and the leaderboard report
# (Markdown and a self-contained HTML page) with the student compared to the base image by image
demo: $(STAMP)
	$(BIN)/flowopd train opd --out $(DEMO)/opd $(if $(wildcard $(DEMO)/opd/run.json),--resume,)
	$(BIN)/flowopd eval --suite all --model $(DEMO)/opd/lora --out $(DEMO)/eval-student
	$(BIN)/flowopd eval --suite all --model mini-base --out $(DEMO)/eval-base
	$(BIN)/flowopd report $(DEMO)/eval-student $(DEMO)/eval-base --baseline $(DEMO)/eval-base --format html --out $(DEMO)/report.html
	$(BIN)/flowopd report $(DEMO)/eval-student $(DEMO)/eval-base --baseline $(DEMO)/eval-base --out $(DEMO)/report.md
	@cat $(DEMO)/report.md
	@echo "HTML report: $(DEMO)/report.html"

test: $(STAMP) lint-imports
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the import layers (pyproject.toml [tool.importlinter], docs/architecture.md), checked on an installed copy: there the sibling
# folders (reward_models/, benchmarks/, teachers/, cli/) sit under flowopd/ as they do in the wheel
lint-imports: $(STAMP)
	rm -rf build/lib build/import-graph && mkdir -p build
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target build/import-graph . 2> build/import-graph.log \
		|| (cat build/import-graph.log; exit 1)
	cd build/import-graph && PYTHONPATH=. ../../$(BIN)/lint-imports ../../pyproject.toml --no-cache

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python tests/bench/cli_startup.py
	$(BIN)/python tests/bench/mini_throughput.py
	$(BIN)/python tests/bench/grpo_step.py
	$(BIN)/python tests/bench/opd_time.py
	$(BIN)/python tests/bench/opd_memory.py
	$(BIN)/python tests/bench/eval_mini.py
	$(BIN)/python tests/bench/sd35m_bench.py --size small

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info runs
