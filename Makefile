# SPICE-in-the-loop calibration and BRUNO training. `make all` runs the main job end to end on a
# fresh clone; `make test` runs the test suite. Both install what they need first (`make setup`).
# Every stage target passes ARGS through to its command, e.g.
#   make train EXP=jsb_alg_bptt ARGS="--set optim.epochs=10"
#   make calibrate ARGS="rram --quick --presets /tmp/presets"
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Where datasets live (downloaded there with a sha256 check when missing). CI points it at ../shared/data.
export BRUNO_DATA_DIR ?= $(CURDIR)/data
EXP ?= jsb_felif_bruno
GROUP ?= braille
# The trained run `make cosim` exports to ngspice (a results/train/<run> directory).
RUN ?=
JOBS ?= $(shell nproc)
ARGS ?=
# A user's device directory (a name under devices/, or a path; README "Your own device"): calibrate,
# validate, train and cosim then use its netlists and presets. Empty: the shipped device.
DEVICE ?=
ifneq ($(strip $(DEVICE)),)
export BRUNO_DEVICE := $(DEVICE)
endif
# Scratch directory of `make smoke` (its presets, reports, runs); removed by `make clean`.
SMOKE_DIR ?= results/smoke
# The fused kernel's build directory (bruno/kernels/build.py: $BRUNO_NATIVE_DIR or bruno/kernels/build).
NATIVE_BUILD ?= $(or $(BRUNO_NATIVE_DIR),bruno/kernels/build)
# The fused kernel shares torch's OpenMP runtime; spinning idle threads cost more than they save
# on small, busy machines (measured: BRUNO training steps 2x faster with PASSIVE on 2 loaded cores).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: all setup native test lint smoke calibrate validate train sweep bench report diagnose cosim devices clean

# The stages run one after another even under `make -j`: each needs the previous one's output.
all: setup  ## the main job: calibrate -> validate -> train (default experiment) -> report
	$(MAKE) calibrate ARGS=
	$(MAKE) validate ARGS=
	$(MAKE) train ARGS=
	$(MAKE) report ARGS=

setup: $(STAMP) native  ## system ngspice, .venv with pinned dependencies, native fine-path kernel

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

native: $(STAMP)  ## build the fused fine-path kernel for this CPU (portable fallback if it fails)
	$(PY) -m bruno.kernels build

test: setup  ## the test suite (fast; real data from BRUNO_DATA_DIR)
	$(PY) -m pytest -q $(ARGS)

lint: setup  ## ruff: lint and formatting
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

smoke: setup  ## the main job end to end in quick mode (scratch presets, tiny training): < 5 min
	bash scripts/smoke.sh $(SMOKE_DIR)

calibrate: setup  ## refit the FeLIF and RRAM compact models against ngspice
	$(PY) -m calibration calibrate $(ARGS)

validate: setup  ## compact models vs ngspice on held-out stimuli; non-zero exit when out of tolerance
	$(PY) -m calibration validate $(ARGS)

train: setup  ## train one experiment: make train EXP=<name> (see pipelines/configs/)
	$(PY) -m pipelines train $(EXP) $(ARGS)

sweep: setup  ## every seed of a group's experiments in parallel: make sweep GROUP=braille JOBS=16
	$(PY) -m pipelines sweep $(GROUP) --jobs $(JOBS) $(ARGS)

bench: setup  ## memory/time benchmark BRUNO vs BPTT vs checkpointing; fine-path throughput
	$(PY) -m pipelines bench $(ARGS)

diagnose: setup  ## BRUNO's gradient vs BPTT's on one batch: make diagnose ARGS="braille_felif_fp_v0"
	$(PY) -m pipelines diagnose $(ARGS)

cosim: setup  ## a trained run as a circuit in ngspice vs PyTorch: make cosim RUN=results/train/<run>
	@test -n "$(RUN)" || { echo "make cosim: give RUN=results/train/<run> (a trained run directory)" >&2; exit 2; }
	$(PY) -m pipelines cosim $(RUN) --jobs $(JOBS) $(ARGS)

devices: setup  ## the devices side by side (shipped + devices/*): parameters, validation, accuracy
	$(PY) -m pipelines devices $(ARGS)

report: setup  ## gather results/train/* into tables and figures
	$(PY) -m pipelines report $(ARGS)

clean:  ## remove results (smoke included) and the native kernel build; keeps .venv and presets
	rm -rf results build $(SMOKE_DIR) $(NATIVE_BUILD)
