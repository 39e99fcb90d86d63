"""RRAM synapse calibration: 1T1R JART VCM v1b cell in ngspice -> 3-bit conductance levels.

SPICE decks: ``netlists/rram.cir`` (1T1R programming: SET with compliance, or RESET),
``netlists/rram_read.cir`` (read at a small voltage), both including ``netlists/rram_cell.inc``.

``calibrate`` sweeps the programming (compliance) current for the nominal cell and the
variability corners (the paper's Fig. 4a), fits a conductance-vs-programming-current law with lmfit,
picks eight programming currents for the 3-bit states, runs a Monte-Carlo over the device-to-device
variability (recycled worker processes, failures reported per device) and fits each state's
distribution (Fig. 4b). It writes ``rram.json`` into the preset directory atomically.

The law is fitted over the cell's whole useful programming-current range (20-400 uA, ends
included), so neither the levels nor the validation ask it to extrapolate. Every programmed state
(sweep and Monte-Carlo device) is read at each candidate read voltage; those whose reads disturb
the state are dropped, and the preset stores the levels and a law at every supported one
(``reads``; :meth:`bruno.presets.RRAMPreset.at_read_voltage`).

``validate`` checks the calibrated laws against SPICE at programming currents the fit never
saw (strictly between the fitted points) and the calibrated distributions against a fresh
Monte-Carlo (different seed, two-sample KS per state), at every supported read voltage and midway
between them (the preset's interpolation); it writes ``rram.json`` and the figures (Fig. 4a, 4b,
the levels' read I-V) into the reports directory. Signatures and default locations are those of
every device module (:mod:`calibration`).

Programming protocol: each device starts in its RESET state (N_disc = its N_discmin) and gets one
SET pulse with the compliance current; the read is on the cell alone in the SET polarity, at the
default 0.2 V (the levels and level currents) and at every supported read voltage.
Device-to-device variability: r_fil, l_disc, N_discmax uniform over the JART v1b bounds, N_discmin
log-uniform over 4e-3..0.25 (assumed shapes; the source gives bounds only). Devices whose N_discmin
exceeds the filament a low compliance grows cannot be programmed that low: they make the lowest
states overlap, which the validation report names (the synapse layer samples the calibrated
per-state Monte-Carlo conductances, so training sees it).

Layout: ``common`` (decks, bounds, conditions, the device), ``cell`` (ngspice programming and
reads, batches), ``law`` (conductance law and level statistics), ``calibrate_stage`` and
``validate_stage`` (the stages, with the signatures of every device module: :mod:`calibration`).
The names below are the public API.
"""

from calibration.rram import cell  # noqa: F401,E402  (tests patch its run_jobs)
from calibration.rram.calibrate_stage import (  # noqa: F401
    calibrate,
)
from calibration.rram.cell import (  # noqa: F401
    MAX_STEPS,
    CellRead,
    conductances_at,
    corner_devices,
    monte_carlo,
    program,
    program_and_read,
    read,
    read_cell,
    read_disturb,
    run_jobs,
    sample_devices,
    sweep,
)
from calibration.rram.common import (  # noqa: F401
    CALIBRATION_SEED,
    CYCLE_TO_CYCLE_READ_NOISE_REL,
    CYCLE_TO_CYCLE_SOURCE,
    FIT_CURRENTS,
    HELD_OUT_CURRENTS,
    I_PROG_MAX,
    I_PROG_MIN,
    LAW_NAME,
    LEVEL_CURRENT_RANGE,
    N_LEVELS,
    NETLIST,
    PRESET_NAME,
    PRESET_PATH,
    READ_DISTURB_MAX_REL,
    READ_DISTURB_READS,
    READ_NETLIST,
    READ_VOLTAGE,
    READ_VOLTAGE_CANDIDATES,
    SEPARATION_SIGMAS,
    SPREAD,
    T_PULSE,
    TOL_LEVEL_REL_ERROR,
    V_SET,
    VALIDATION_SEED,
    VARIED,
    Device,
    RRAMError,
    bounds,
    check_device,
    check_programming_current,
    check_within_fit,
    nominal,
)
from calibration.rram.law import (  # noqa: F401
    LAW_FIT_STARTS,
    conductance_law,
    fit_conductance_law,
    fit_distribution,
    fitted_range,
    invert_law,
    ks_critical,
    law_from_payload,
    level_currents,
    robust_separations,
    separations,
)
from calibration.rram.validate_stage import (  # noqa: F401
    validate,
)
