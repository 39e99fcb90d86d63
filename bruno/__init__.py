"""bruno: FeLIF/LIF neurons, RRAM synapses, and the BRUNO, BPTT and checkpointing trainers.

Modules: :mod:`bruno.felif` (the FeLIF physics), :mod:`bruno.fine_path` (fused and reference fine
paths), :mod:`bruno.native` (the C/OpenMP kernel), :mod:`bruno.algorithms` (trainers by name),
:mod:`bruno.layers` (FeLIFLayer, LIFLayer, RLIFLayer), :mod:`bruno.synapses` (SynapticLinear),
:mod:`bruno.presets` (calibrated presets), :mod:`bruno.lif`, :mod:`bruno.surrogate`.
"""
