# lora_lab: two commands on a fresh machine.
#   make lab    opens the course in JupyterLab (creates .venv on first use)
#   make test   runs every test: unit tests + nbval (strict) on every notebook
PYTHON ?= python3
VENV   ?= .venv
# This project's machines carry a CPU build of torch 2.13.0 on local disk; elsewhere pip
# takes your platform's build of the same version (override: make lab TORCH=torch).
TORCH  ?= torch==2.13.0
PORT   ?= 8888
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JupyterLab refuses to run as root (containers, cloud VMs) unless told it may.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab lab-headless test unit browser notebooks demo model bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks/00_welcome.ipynb

# For a remote or classroom server: no browser, fixed port, all interfaces (TOKEN=... to choose it).
lab-headless: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) --no-browser --ip=0.0.0.0 --port=$(PORT) \
	  $(if $(TOKEN),--IdentityProvider.token=$(TOKEN)) notebooks/00_welcome.ipynb

test: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-sanitize-with notebooks/sanitize.cfg tests notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser

browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser

# Re-execute every notebook in place (for authors, after changing the library).
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 notebooks/*.ipynb

demo: $(STAMP)
	$(BIN)/python -m lora_lab qlora

# Rebuild data/lab-gpt2 (seeded; uses CUDA when available).
model: $(STAMP)
	$(BIN)/python scripts/build_lab_model.py

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
