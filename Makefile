# Two commands set up everything on a fresh machine:
#   make run    the relay on http://0.0.0.0:$(PORT)
#   make test   ruff, mypy, the import contracts + the whole test suite (installs redis-server, espeak-ng and nginx when missing)
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8000
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench demo clean sysdeps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs exactly the versions CI used (constraints.txt), the package in editable mode, dev extras included.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/relay serve --port $(PORT)

sysdeps:
	@scripts/sysdeps.sh redis-server:redis-server espeak-ng:espeak-ng nginx:nginx

lint: $(STAMP)
	$(BIN)/ruff check relay cascade webhooks tests bench scripts
	$(BIN)/ruff format --check relay cascade webhooks tests bench scripts
	$(BIN)/mypy relay cascade webhooks scripts/import_contracts.py
	$(BIN)/lint-imports --no-cache --no-logo

# Two workers, one per core of the CI machine: most tests wait on real-time audio, not on the CPU.
test: $(STAMP) sysdeps lint
	$(BIN)/pytest -n 2

bench: $(STAMP) sysdeps
	$(BIN)/python bench/codecs.py
	$(BIN)/python bench/vad.py
	$(BIN)/python bench/cascade_latency.py
	$(BIN)/python bench/realtime_load.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/http_edge.py
	$(BIN)/python bench/outbound.py
	$(BIN)/python bench/handoff.py
	$(BIN)/python bench/fleet.py

demo: $(STAMP)
	@scripts/sysdeps.sh espeak-ng:espeak-ng
	$(BIN)/relay demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
