"""bruno: FeLIF/LIF neurons, RRAM synapses, and the BRUNO, BPTT and checkpointing trainers.

Modules: :mod:`bruno.felif` (the FeLIF physics and spike rules), :mod:`bruno.kernels` (the fine
path's backends: the fused C/OpenMP kernel, its build and FFI, and the torch loop),
:mod:`bruno.device` (device-level simulation), :mod:`bruno.algorithms` (trainers by name),
:mod:`bruno.layers` (FeLIFLayer, LIFLayer, RLIFLayer), :mod:`bruno.synapses` (SynapticLinear),
:mod:`bruno.presets` (calibrated presets), :mod:`bruno.lif`, :mod:`bruno.surrogate`.
"""
