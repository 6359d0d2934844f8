# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first when needed.
PY := .venv/bin/python
MODEL_PATH ?=

.PHONY: setup test lint demo clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) example_chat_hf.py $(if $(MODEL_PATH),--model_path $(MODEL_PATH))

clean:
	rm -rf .venv .pytest_cache .ruff_cache
