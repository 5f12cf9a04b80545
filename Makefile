# One virtual environment for development, the demo and the tests; created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: demo test setup system-deps lint clean bench-aggregation v0

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-edge.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The demo starts from the shipped version 0, so it needs no TensorFlow: its own small
# environment installs in well under a minute (requirements-demo.txt).
DEMO_VENV ?= .venv-demo
demo: $(DEMO_VENV)/.installed   ## the main job: federated simulation from the shipped version 0, report, keyboard page
	$(DEMO_VENV)/bin/python -m tools.demo $(ARGS)

# With DEMO_VENV=.venv (TensorFlow, for --rebuild or --with-central) the full environment's own
# rule above builds it: a second rule for the same file would install only the demo's packages
# into .venv and mark it complete.
ifneq ($(DEMO_VENV),$(VENV))
$(DEMO_VENV)/.installed: requirements-demo.txt requirements-edge.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q -r requirements-demo.txt
	touch $@
endif

# Version 0 as shipped in models/v0: proxy text only, pinned seed and schedule. Built beside the
# old one and swapped in at the end, so an interrupted run leaves the shipped version intact.
V0_ARGS ?= --proxy corpora/gutenberg_mix.jsonl --proxy corpora/sotu.jsonl --seed 0 --epochs 14 \
           --steps-per-epoch 1000 --lr-decay-to 0.1 --patience 2 --version-id v0
# Then two more epochs with present-day chat mixed in, from the first stage's word list and weights,
# at a lower rate (docs/quality.md: +1 point top-3 for the LSTM on both device corpora).
V0_CHAT_ARGS ?= --proxy corpora/gutenberg_mix.jsonl --proxy corpora/sotu.jsonl --proxy corpora/topical_chat.jsonl \
                --seed 1 --epochs 2 --steps-per-epoch 1000 --lr 3e-4 --lr-decay-to 0.1 --patience 2 --version-id v0
# The keyboard's base n-gram, from the proxy text (shipped with the app, in its package, not per version).
NGRAM_ARGS ?= --proxy corpora/gutenberg_mix.jsonl --proxy corpora/sotu.jsonl --proxy corpora/topical_chat.jsonl
# Last, the word list's tail takes present-day words from a public frequency list (completion only;
# the weights do not change; docs/quality.md, "Present-day words in the word list").
TAIL_ARGS ?= --tail corpora/wordfreq_en.tsv --max-tail 100000
v0: setup            ## rebuild models/v0 reproducibly (about an hour on 2 idle cores)
	rm -rf models/v0.new models/v0.stage1 models/v0.stage2
	$(PY) -m tools.pretrain $(V0_ARGS) --out models/v0.stage1 --no-progress
	$(PY) -m tools.pretrain --init models/v0.stage1 $(V0_CHAT_ARGS) --out models/v0.stage2 --no-progress
	$(PY) -m tools.add_words --base models/v0.stage2 $(TAIL_ARGS) --out models/v0.new --version-id v0
	rm -rf models/v0 models/v0.stage1 models/v0.stage2 && mv models/v0.new models/v0
	$(PY) -m tools.proxy_ngram $(NGRAM_ARGS) --out edge_runtime/data/proxy_trigram.npz --force
	@echo "models/v0 and edge_runtime/data/proxy_trigram.npz rebuilt; commit them with: git add models edge_runtime/data"

# Debian's Chromium for the browser tests (Playwright drives it; its own browser download
# cannot work here) and nginx for the deploy/ test (TLS in front of the coordinator).
# Installed once, as root, if missing.
system-deps:
	@{ test -x /usr/bin/chromium && test -x /usr/sbin/nginx; } || { \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root or: sudo apt-get install -y chromium fonts-dejavu-core nginx-light" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core nginx-light >/dev/null; }

test: setup system-deps   ## lint, then the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(ARGS)

# Flower's aggregate in its own environment: flwr pins protobuf/rich versions TensorFlow disagrees with.
bench-aggregation:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q flwr==1.41.0 numpy safetensors cryptography sentencepiece
	.venv-bench/bin/python -m tools.bench aggregation $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-edge build *.egg-info data/report.* .pytest_cache
