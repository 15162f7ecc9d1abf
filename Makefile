# Small entry points; the real work lives in ssps_nni/cli/ (the `ssps` console command).
PY := .venv/bin/python
SSPS := .venv/bin/ssps
ARGS ?=

.PHONY: setup test demo data

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(SSPS) search $(ARGS)

data:
	python3 tools/make_cifar_subset.py
