# The two commands of the README: `make smoke` (the main job on the embedded defaults) and
# `make test`. Both set everything up first (scripts/setup.sh: .venv + pip install).
VENV ?= .venv
export VENV

.PHONY: setup smoke test lint
setup:
	bash scripts/setup.sh

smoke: setup
	$(VENV)/bin/twm-suite launch smoke
	$(VENV)/bin/twm-suite status smoke

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check .
