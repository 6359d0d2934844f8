# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first when needed; `make test` also
# builds the llama.cpp backend (`make setup-llamacpp`, about 10 minutes once per machine), `make demo` does not.
PY := .venv/bin/python
MODEL_PATH ?=

.PHONY: setup setup-llamacpp test lint demo clean

setup:
	@bash scripts/setup.sh

setup-llamacpp: setup
	@bash scripts/setup_llamacpp.sh

lint: setup
	$(PY) -m ruff check .

test: setup setup-llamacpp lint
	$(PY) -m pytest

demo: setup
	$(PY) example_chat_hf.py $(if $(MODEL_PATH),--model_path $(MODEL_PATH))

clean:
	rm -rf .venv .pytest_cache .ruff_cache
