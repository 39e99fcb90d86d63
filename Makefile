# SPICE-in-the-loop calibration and BRUNO training. `make all` runs the main job end to end on a
# fresh clone; `make test` runs the test suite. Both install what they need first (`make setup`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Where datasets live (downloaded there with a sha256 check when missing). CI points it at ../shared/data.
export BRUNO_DATA_DIR ?= $(CURDIR)/data
EXP ?= jsb_felif_bruno
GROUP ?= braille
JOBS ?= $(shell nproc)
# The fused kernel shares torch's OpenMP runtime; spinning idle threads cost more than they save
# on small, busy machines (measured: BRUNO training steps 2x faster with PASSIVE on 2 loaded cores).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: all setup native test lint calibrate validate train sweep bench report clean

all: setup calibrate validate train report  ## the main job: calibrate -> validate -> train -> report

setup: $(STAMP) native  ## system ngspice, .venv with pinned dependencies, native fine-path kernel

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

native: $(STAMP)  ## build the fused fine-path kernel for this CPU (portable fallback if it fails)
	$(PY) -m bruno.native build

test: setup  ## the test suite (fast; real data from BRUNO_DATA_DIR)
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

calibrate: setup  ## refit the FeLIF and RRAM compact models against ngspice
	$(PY) -m calibration calibrate

validate: setup  ## compact models vs ngspice on held-out stimuli; non-zero exit when out of tolerance
	$(PY) -m calibration validate

train: setup  ## train one experiment: make train EXP=<name> (see pipelines/configs/)
	$(PY) -m pipelines train $(EXP)

sweep: setup  ## every seed of a group's experiments in parallel: make sweep GROUP=braille JOBS=16
	$(PY) -m pipelines sweep $(GROUP) --jobs $(JOBS)

bench: setup  ## memory/time benchmark BRUNO vs BPTT vs checkpointing; fine-path throughput
	$(PY) -m pipelines bench

report: setup  ## gather results/train/* into tables and figures
	$(PY) -m pipelines report

clean:
	rm -rf results build
