# The two set-up commands: `make serve` (demo) and `make test` (whole suite). Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   := models/demo

.PHONY: serve test venv demo bench clean

serve: demo
	$(PY) scripts/demo.py --models $(DEMO)

test: venv
	$(PY) -m pytest tests

# (Re)create the venv whenever the dependency files change. torch is pinned in the same pip command.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) scripts/build_demo.py --out $(DEMO)

bench: venv
	$(PY) scripts/bench_engine.py --json docs/bench_engine.json --plot docs/bench_engine.png

clean:
	rm -rf $(VENV) $(DEMO)
