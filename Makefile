# Quick start: `make reproduce` (set up, then the default Snakemake run) and `make test`.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.ncn-installed
CORES ?= all
# The profile whose results/<profile>/ folder `make mlflow-ui` and `make paper` use.
PROFILE ?= default
PORT  ?= 5000
# Offline machines (ours, CI): the TinyStories excerpt beside the checkout.
export NCN_DATA_DIR ?= $(if $(wildcard ../shared/data/tinystories/train.txt),$(abspath ../shared/data/tinystories),)

.PHONY: setup test test-fast reproduce smoke paper bench mutate mlflow-ui chromium clean help tex bytecode

help:
	@echo "make setup      create $(VENV) and install the pinned environment (idempotent)"
	@echo "make reproduce  setup, then 'snakemake --cores $(CORES)' (the default profile)"
	@echo "make test       setup, then the whole pytest suite"
	@echo "make smoke      setup, then the smoke profile (~3 min)"
	@echo "make paper      rebuild results/$(PROFILE)/paper/ncn.pdf (after editing paper/)"
	@echo "make bench      speed benchmarks -> results/bench/ (and results/timing/stages.csv)"
	@echo "make mutate     mutation testing of the science modules -> results/bench/mutation.csv (not CI)"
	@echo "make mlflow-ui  browse the runs of results/$(PROFILE)/ (PROFILE=smoke make mlflow-ui) on port $(PORT)"
	@echo "make clean      delete results/$(PROFILE)/ (the profile's whole results folder) and .snakemake/"

setup: $(STAMP) tex bytecode

# Byte-compile our own sources (incremental: only what changed). Where PYTHONDONTWRITEBYTECODE is
# set (as on our CI machine) Python would otherwise compile every ncn module anew in every job:
# ~30 ms a process (bench/README.md, "Start-up").
bytecode: $(STAMP)
	@$(PY) -m compileall -q src

$(STAMP): envs/requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r envs/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# LaTeX for the paper rule: Debian's packages, installed when missing and we are root.
TEX_PKGS := latexmk texlive-latex-recommended texlive-fonts-recommended lmodern poppler-utils
tex:
	@if command -v latexmk >/dev/null && command -v pdftotext >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing TeX: $(TEX_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEX_PKGS) >/dev/null; \
	else echo "WARNING: latexmk/pdftotext missing; the paper rule needs: apt-get install $(TEX_PKGS) (or conda: envs/paper.yaml)"; fi

test: setup chromium
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

reproduce: setup
	$(VENV)/bin/snakemake --cores $(CORES)

smoke: setup
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/smoke.yaml

paper: setup
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/$(PROFILE).yaml --forcerun paper results/$(PROFILE)/paper/ncn.pdf

# model: every variant vs a textbook GPT (tokens/s, ratios, MFU); startup: a smoke `ncn train`'s
# start-up and exit; stages: the last Snakemake run of PROFILE, wall time per stage (bench/README.md)
bench: setup
	$(VENV)/bin/ncn bench model --out results/bench/model.csv
	$(VENV)/bin/ncn bench startup --out results/bench/startup.csv
	@if [ -d results/$(PROFILE)/benchmarks ]; then $(VENV)/bin/ncn bench stages --benchmarks results/$(PROFILE)/benchmarks --out results/$(PROFILE)/timing/stages.csv; fi

# Mutation testing (mutmut, pinned in envs/mutate.txt; not in the main environment, not in CI).
# MUTATE_SAMPLE mutants per module (seeded): 20 x 11 modules is about 30 min on 2 idle cores (measured
# 6-9 mutants/min); 40 halves the sampling error in about an hour; 0 runs every mutant (hours).
MUTATE_SAMPLE ?= 20
MUTATE_ARGS ?=
mutate: setup
	$(PY) -m pip install -q --disable-pip-version-check -r envs/mutate.txt
	$(PY) bench/mutate.py --sample $(MUTATE_SAMPLE) $(MUTATE_ARGS)

# The UI runs inside results/$(PROFILE)/: the store keeps its artifact locations relative to that
# folder (so the folder can be copied or moved). The job-execution workers stay off, so Ctrl-C
# leaves no processes behind.
mlflow-ui: setup
	@test -f results/$(PROFILE)/mlflow.db || { echo "no MLflow store in results/$(PROFILE)/: run that profile first, or pick one: make mlflow-ui PROFILE=smoke"; exit 2; }
	@echo "MLflow UI for results/$(PROFILE); the runs table: $$($(PY) -c 'import sys; from ncn.tracking import ui_url; print(ui_url(sys.argv[1], int(sys.argv[2])))' results/$(PROFILE) $(PORT))"
	cd results/$(PROFILE) && MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(abspath $(VENV))/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

# Browser tests (tests/test_mlflow_ui.py): headless Chromium from Debian's packages, when root.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "WARNING: chromium missing; the MLflow UI browser test will skip (apt-get install chromium)"; fi

clean:
	rm -rf results/$(PROFILE) .snakemake
