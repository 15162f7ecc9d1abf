# Small entry points; the real work lives in tools/.
PY := .venv/bin/python
ARGS ?=

.PHONY: setup test demo data

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/search.py $(ARGS)

data:
	python3 tools/make_cifar_subset.py
