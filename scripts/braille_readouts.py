"""What a trained Braille network's output layer decides by: accuracy of its trained readout, of
the spike counts alone and of the time-mean membrane voltage alone, on the valid and test splits;
optionally with the FeLIF outputs' fine path re-run at another number of fine steps (a run
trained at 10 us fine steps, checked at 1 us).

    .venv/bin/python scripts/braille_readouts.py results/train/<run> [--fine-steps 10000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipelines import tasks
from pipelines.cosim.network import load_run


def evaluate(model, task, split: str, batch_size: int = 135) -> dict:
    """Accuracies (%) by readout and the mean output spike count per sample, one split."""
    correct = {"trained": 0, "counts": 0, "voltage": 0}
    samples, spikes = 0, 0.0
    model.outputs.record_state = True
    index = list(range(task.size(split)))
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            inputs, labels, _ = task.batch(split, index[start : start + batch_size], "cpu")
            logits, aux = model(inputs)
            counts = aux["output_spikes"].sum(0)
            voltage = model.outputs.last_v.mean(0)
            # ties in the counts go to the lowest index, as argmax does
            for name, score in (("trained", logits), ("counts", counts), ("voltage", voltage)):
                correct[name] += int((score.argmax(-1) == labels).sum())
            samples += len(labels)
            spikes += float(counts.sum())
    out = {f"{k}_accuracy_pct": 100.0 * v / samples for k, v in correct.items()}
    out["output_spikes_per_sample"] = spikes / samples
    out["samples"] = samples
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fine-steps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    config, model, checkpoint = load_run(args.run)
    if args.fine_steps is not None:
        if not hasattr(model.outputs, "fine_steps"):
            sys.exit(f"{args.run}: its outputs are {type(model.outputs).__name__}, no fine path")
        model.outputs.fine_steps = args.fine_steps
    task = tasks.make_task(config)
    result = {
        "run": str(args.run),
        "checkpoint": checkpoint,
        "fine_steps": getattr(model.outputs, "fine_steps", None),
        "coarse_dt_s": config.model.coarse_dt,
        **{split: evaluate(model, task, split) for split in ("valid", "test")},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
