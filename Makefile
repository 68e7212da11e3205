# Two commands on a fresh machine:  `make main`  (prune + evaluate SmolLM2-135M offline)  and  `make test`.
PY ?= python3
PIP := $(PY) -m pip
STAMP := .install.stamp

.PHONY: install main test test-fast

$(STAMP): pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

main: $(STAMP)
	slimgpt experiment=quickstart

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
