"""FeLIF neuron: ngspice runs of ``netlists/felif.cir``, lmfit calibration of the compact model
(:mod:`bruno.felif`) and validation on held-out stimuli.

``calibrate`` simulates the training stimuli in ngspice (DC levels across the working range and
current pulse trains), fits the compact model's *effective* parameters with lmfit and writes
``felif.json`` into the preset directory (atomically, with provenance). ``validate`` compares that
preset against ngspice on stimuli the fit never saw (other DC levels, including the edges of the
range, and a random spike-train input current) and writes ``felif.json`` plus figures into the
reports directory; it returns False when a stated tolerance is missed. The stages' signatures and
default locations are those of every device module (:mod:`calibration`).

The compact model is evaluated only through :func:`bruno.device.simulate` (one batched call per
fit iteration: every stimulus times every finite-difference parameter set is one neuron), so the
equations live in one place. Units are SI throughout.

Layout: ``common`` (constants, fit variables, errors), ``stimuli``, ``traces`` (ngspice side),
``fit`` (compact model and lmfit), ``calibrate_stage`` and ``validate_stage`` (the stages, with
the signatures of every device module: :mod:`calibration`). Below: the public API.
"""

from calibration.felif.calibrate_stage import (  # noqa: F401
    calibrate,
)
from calibration.felif.common import (  # noqa: F401
    DT,
    FIT_FIELDS,
    I_MAX,
    I_MIN,
    I_NEGATIVE_MAX,
    NETLIST,
    PRESET,
    PRESET_NAME,
    RHEOBASE_FIT_WEIGHT,
    RHEOBASE_TRAINING,
    RHEOBASE_VALIDATION,
    TARGETS,
    FeLIFCalibrationError,
    PresetError,
    StimulusRangeError,
)
from calibration.felif.fit import (  # noqa: F401
    Target,
    compact_runs,
    design_parameters,
    fit,
    fitted_si,
    injected_charge,
    near_rheobase_scale,
    residuals,
)
from calibration.felif.stimuli import (  # noqa: F401
    Stimulus,
    check_stimulus,
    dc_stimulus,
    near_rheobase,
    negative_step,
    pulse_train,
    spike_train,
    training_stimuli,
    validation_stimuli,
)
from calibration.felif.traces import (  # noqa: F401
    Trace,
    netlist_parameters,
    spice_deck,
    spice_run,
    spice_runs,
    subthreshold_mask,
    upward_crossings,
)
from calibration.felif.validate_stage import (  # noqa: F401
    validate,
)
