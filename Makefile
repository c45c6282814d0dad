# lora_lab: two commands on a fresh machine.
#   make lab    opens the course in JupyterLab (creates .venv on first use)
#   make test   runs every test: unit tests + nbval (strict) on every notebook + the browser test
# Both install the exact versions in requirements-lock.txt (those that made the committed
# outputs); `make lab UNPINNED=1` / `make test UNPINNED=1` install the newest versions that
# pyproject.toml allows instead. `make lock` refreshes the lock (README: "Pinned versions").
PYTHON ?= python3
VENV   ?= .venv
# This project's machines carry a CPU build of torch 2.13.0 on local disk; elsewhere pip
# takes your platform's build of the same version. TORCH chooses the build, e.g.
#   make lab TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# (the version itself comes from the lock unless UNPINNED=1).
TORCH  ?= torch==2.13.0
PORT   ?= 8888
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet
LOCK   := requirements-lock.txt
# JupyterLab refuses to run as root (containers, cloud VMs) unless told it may.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

ifeq ($(UNPINNED),)
STAMP := $(VENV)/.installed
else
# Newest allowed versions: a stamp of its own, so that switching modes reinstalls; the tests
# that compare the environment with the lock skip (tests/test_environment.py), and nbval
# checks the notebooks' asserts but not their outputs byte for byte (--nbval-lax), since
# newer releases may print differently.
STAMP := $(VENV)/.installed-unpinned
export LORA_LAB_UNPINNED := 1
endif

# nbval re-executes the notebooks under a CPU setting other than the one their committed
# outputs were made with (the defaults: all vector instructions, 2 threads), as a learner's
# laptop would: one thread (other accumulation order in matmuls and reductions) and AVX2
# kernels in ATen, MKL and oneDNN (other vector width). A printed number that depends on the
# CPU then fails here, not on a learner's machine. Unit tests run with the defaults.
NBVAL_CPU ?= OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
NBVAL     := $(if $(UNPINNED),--nbval-lax,--nbval) --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: lab lab-headless test lint unit browser notebooks demo model bench lock clean-venv

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed-unpinned
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	$(PIP) -r $(LOCK)
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.installed-unpinned: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PIP) --upgrade --upgrade-strategy eager -c $(VENV)/torch-constraint.txt -e ".[test]"
	touch $@

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks/00_welcome.ipynb

# For a remote or classroom server: no browser, fixed port, all interfaces (TOKEN=... to choose it).
lab-headless: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) --no-browser --ip=0.0.0.0 --port=$(PORT) \
	  $(if $(TOKEN),--IdentityProvider.token=$(TOKEN)) notebooks/00_welcome.ipynb

# ruff (lint + import order), unit and browser tests (default CPU settings), then one nbval pass
# over the notebooks under NBVAL_CPU (above); all always run, and the target fails if any did.
test: $(STAMP)
	$(BIN)/ruff check .; lint=$$?; \
	$(BIN)/python -m pytest tests; unit=$$?; \
	env $(NBVAL_CPU) $(BIN)/python -m pytest $(NBVAL) notebooks; nb=$$?; \
	test $$lint -eq 0 && test $$unit -eq 0 && test $$nb -eq 0

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser

browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser

# Re-execute every notebook in place (for authors, after changing the library or the lock).
# Default CPU settings: these are the outputs that `make test` compares under NBVAL_CPU.
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 notebooks/*.ipynb

# Refresh the pins: a fresh virtual environment with the newest allowed versions, frozen into
# the lock. Then `make clean-venv notebooks test` and commit the lock with the notebooks.
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/lora_lab-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(MAKE) --no-print-directory VENV=$(LOCK_VENV) UNPINNED=1 $(LOCK_VENV)/.installed-unpinned
	{ sed -n '/^#/p' $(LOCK) 2>/dev/null; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

demo: $(STAMP)
	$(BIN)/python -m lora_lab qlora

# Rebuild data/lab-gpt2 (seeded; uses CUDA when available).
model: $(STAMP)
	$(BIN)/python scripts/build_lab_model.py

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
