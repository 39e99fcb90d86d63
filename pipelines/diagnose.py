"""`python -m pipelines diagnose [EXP] [--batch B]`: how close BRUNO's gradient is to the exact one.

For one experiment's network (default ``braille_felif_fp_v0``: FeLIF output neurons), one fixed
batch and one set of weights (the initial ones, or ``--checkpoint``), the loss gradient is computed
by every FeLIF training algorithm (``--variants``): ``bptt`` (exact: autograd through every fine
step), ``bruno`` with each coarse gradient (``implicit``, ``euler``, ``exact``) and ``coarse``.
Against the reference (BPTT's; without ``bptt`` in the list, ``exact``'s, which equals it to
rounding - a tested identity - at BRUNO's cost, so large batches are affordable) it reports

- per parameter tensor (= per layer): cosine similarity and norm ratio;
- per coarse step: cosine and norm ratio of the gradient at the FeLIF layer's input drive, in
  windows of coarse steps, and grouped by the neurons' operating point at that step (input
  current, time since the neuron's last spike);
- the operating point itself: input currents, membrane voltages and the fraction of time at the
  -5 V clip, output spike counts per sample, silent neurons, and for Braille outputs the counts of
  the labelled class against the others and the top-count margin (the logits are counts).

The forward values of BPTT and BRUNO are the same (a required identity; with ``bptt`` in the list
the fine path runs on the torch backend so that they agree bit for bit, and the run checks the
spikes); ``coarse``
integrates at the coarse step, so its gradient belongs to another trajectory and is listed for
scale. It writes ``<out>/<experiment>.json`` and a markdown table. BPTT's graph holds every fine
step, so this is a measurement for small batches (``--batch``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from pipelines import config as cfg
from pipelines import models
from pipelines.schema import AnyExperiment
from pipelines.tasks import make_task
from pipelines.train import add_override_option

RESULTS_DIR = Path("results/diagnose")
# (algorithm, coarse gradient) by the names --variants takes
VARIANTS = {
    "bptt": ("bptt", None),
    "implicit": ("bruno", "implicit"),
    "euler": ("bruno", "euler"),
    "exact": ("bruno", "exact"),
    "coarse": ("coarse", None),
}
STEP_WINDOWS = 10  # coarse-step windows in the per-step table
SINCE_SPIKE_BINS_MS = ((0, 5), (5, 20), (20, 50), (50, 1e9))
CURRENT_BINS_NA = ((-math.inf, 0.0), (0.0, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, math.inf))


def _cos_ratio(got: torch.Tensor, exact: torch.Tensor) -> dict:
    got, exact = got.double().flatten(), exact.double().flatten()
    norm_exact, norm_got = float(exact.norm()), float(got.norm())
    cosine = float(got @ exact) / (norm_got * norm_exact) if norm_got and norm_exact else None
    return {
        "cosine": cosine,
        "norm_ratio": norm_got / norm_exact if norm_exact else None,
        "elements": int(exact.numel()),
    }


def _finite(value):
    """JSON-safe: non-finite floats (an overflowed gradient norm) become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _felif_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from bruno.layers import FeLIFLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, FeLIFLayer)}


def gradients(
    config: AnyExperiment, inputs, labels, mask, task, variant, state_dict=None, backend=None
) -> dict:
    """Loss, parameter gradients, drive gradients and traces of the FeLIF layers for one
    (algorithm, coarse_gradient) variant on one batch; ``backend``: the fine path's, if given."""
    model = models.build(config, 0)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    algorithm, coarse_gradient = variant
    drives: dict[str, torch.Tensor] = {}
    layers = _felif_layers(model)
    for name, layer in layers.items():
        layer.algorithm = algorithm
        layer.coarse_gradient = coarse_gradient or layer.coarse_gradient
        layer.record_state = True
        layer.fine_backend = backend or layer.fine_backend

        def keep(module, args, name=name):
            args[0].retain_grad()
            drives[name] = args[0]

        layer.register_forward_pre_hook(keep)
    start = time.perf_counter()
    logits, _ = model(inputs)
    loss = task.loss_sum(logits, labels, mask) / max(len(labels), 1)
    loss.backward()
    return {
        "loss": float(loss.detach()),
        "logits": logits.detach(),
        "seconds": time.perf_counter() - start,
        "parameters": {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        },
        "drive": {n: d.detach() for n, d in drives.items()},
        "drive_grad": {n: d.grad.detach().clone() for n, d in drives.items()},
        "spikes": {
            n: layers[n].last_v.detach()
            > layers[n].neuron_parameters(torch.float32).threshold_voltage
            for n in layers
        },
        "v": {n: layers[n].last_v.detach() for n in layers},
        "current_scale": {n: layers[n].current_scale for n in layers},
    }


def _since_last_spike(spikes: torch.Tensor, dt_ms: float) -> torch.Tensor:
    """[T, B, N] time (ms) since the neuron's last spike before step t (inf before the first)."""
    since = torch.empty(spikes.shape, dtype=torch.float64)
    last = torch.full(spikes.shape[1:], -math.inf, dtype=torch.float64)
    for t in range(spikes.shape[0]):
        since[t] = (t - last) * dt_ms
        last = torch.where(spikes[t], torch.full_like(last, t), last)
    return since


def compare(reference: dict, other: dict, dt_ms: float) -> dict:
    out = {
        "loss": other["loss"],
        "seconds": other["seconds"],
        "parameters": {
            n: _cos_ratio(g, reference["parameters"][n]) for n, g in other["parameters"].items()
        },
        "layers": {},
    }
    for name, exact in reference["drive_grad"].items():
        got = other["drive_grad"][name]
        steps = exact.shape[0]
        width = max(1, math.ceil(steps / STEP_WINDOWS))
        windows = [
            {
                "steps": [a, min(a + width, steps)],
                **_cos_ratio(got[a : a + width], exact[a : a + width]),
            }
            for a in range(0, steps, width)
        ]
        since = _since_last_spike(reference["spikes"][name], dt_ms)
        current_na = reference["drive"][name].double() * reference["current_scale"][name] * 1e9
        by_since = []
        groups = [
            (f"{lo}-{hi} ms" if hi < 1e9 else f">= {lo} ms", (since >= lo) & (since < hi))
            for lo, hi in SINCE_SPIKE_BINS_MS
        ]
        groups.append(("not yet spiked", torch.isinf(since)))
        for label, chosen in groups:
            if bool(chosen.any()):
                by_since.append(
                    {"since_last_spike": label, **_cos_ratio(got[chosen], exact[chosen])}
                )
        by_current = []
        for lo, hi in CURRENT_BINS_NA:
            chosen = (current_na >= lo) & (current_na < hi)
            if bool(chosen.any()):
                label = (
                    f"< {hi:g}"
                    if lo == -math.inf
                    else (f">= {lo:g}" if hi == math.inf else f"{lo:g}-{hi:g}")
                )
                by_current.append({"input_nA": label, **_cos_ratio(got[chosen], exact[chosen])})
        out["layers"][name] = {
            "drive": _cos_ratio(got, exact),
            "per_step_window": windows,
            "by_time_since_spike": by_since,
            "by_input_current": by_current,
        }
    return out


def operating_point(reference: dict, labels: torch.Tensor | None = None) -> dict:
    """Where the FeLIF layers operate in the forward pass: input currents, membrane voltages
    (how often at the -V_CLIP clip, where the step passes no gradient and the state forgets),
    spike counts; for a Braille output layer also the counts of the labelled class against the
    others and the margin of the top count over the runner-up (the logits are counts)."""
    from bruno.felif import V_CLIP

    out = {}
    q = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    for name, drive in reference["drive"].items():
        current = drive.double() * reference["current_scale"][name]
        spikes = reference["spikes"][name]
        v = reference["v"][name].double()
        counts = spikes.sum(0).double()  # [B, N]
        op = {
            "input_current_nA_p1_p10_p50_p90_p99": (
                torch.quantile(current.flatten(), q) * 1e9
            ).tolist(),
            "negative_input_fraction": float((current < 0).double().mean()),
            "membrane_V_p1_p10_p50_p90_p99": torch.quantile(v.flatten(), q).tolist(),
            "at_negative_clip_fraction": float((v <= -V_CLIP + 1e-3).double().mean()),
            "spikes_per_neuron_per_sample_mean": float(counts.mean()),
            "spikes_per_neuron_per_sample_max": float(counts.max()),
            "spikes_per_sample_mean": float(counts.sum(-1).mean()),
            "silent_fraction": float((counts == 0).double().mean()),
            "coarse_steps": int(spikes.shape[0]),
        }
        if labels is not None and name == "outputs" and labels.dim() == 1:
            chosen = counts.gather(1, labels[:, None].long()).squeeze(1)
            top = counts.topk(2, dim=1).values
            op.update(
                {
                    "labelled_class_count_mean": float(chosen.mean()),
                    "other_class_count_mean": float(
                        ((counts.sum(1) - chosen) / (counts.shape[1] - 1)).mean()
                    ),
                    "top_count_margin_mean": float((top[:, 0] - top[:, 1]).mean()),
                    "batch_accuracy": float(
                        (reference["logits"].argmax(1) == labels).double().mean()
                    ),
                }
            )
        out[name] = op
    return out


def _rounded(value):
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _markdown(payload: dict) -> str:
    lines = [f"# Gradient diagnosis: {payload['experiment']}", "", payload["setup"] + ".", ""]
    lines += [
        "— : not finite (the gradient overflowed in float32). s: wall time of this measurement "
        + (
            "(BRUNO's fine path runs on the torch backend here, for bit-identical forward values)."
            if payload["reference"] == "bptt"
            else "(the fine path on its configured backend)."
        ),
        "",
    ]
    lines += [
        "| variant | loss | s | "
        + " | ".join(f"{n} cos / ratio" for n in payload["parameter_names"])
        + " |"
    ]
    lines += ["|---" * (3 + len(payload["parameter_names"])) + "|"]
    for label, row in payload["variants"].items():
        cells = [
            f"{row['parameters'][n]['cosine']:.3f} / {row['parameters'][n]['norm_ratio']:.3g}"
            if row["parameters"][n]["cosine"] is not None
            else "—"
            for n in payload["parameter_names"]
        ]
        lines.append(
            f"| {label} | {row['loss']:.4f} | {row['seconds']:.1f} | " + " | ".join(cells) + " |"
        )
    for label, row in payload["variants"].items():
        if label == payload["reference"]:
            continue
        for layer, stats in row["layers"].items():
            lines += [
                "",
                f"## {label}: gradient at the input drive of `{layer}` vs {payload['reference']}",
                "",
            ]
            lines += ["| group | cosine | norm ratio | elements |", "|---|---|---|---|"]
            for key, rows in (
                ("steps", stats["per_step_window"]),
                ("since_last_spike", stats["by_time_since_spike"]),
                ("input_nA", stats["by_input_current"]),
            ):
                for r in rows:
                    cos = "—" if r["cosine"] is None else f"{r['cosine']:.3f}"
                    ratio = "—" if r["norm_ratio"] is None else f"{r['norm_ratio']:.3g}"
                    lines.append(f"| {key} {r[key]} | {cos} | {ratio} | {r['elements']} |")
    lines += ["", "## Operating point (forward, identical for every variant)", ""]
    for layer, op in payload["operating_point"].items():
        lines.append(f"- `{layer}`: " + ", ".join(f"{k} = {_rounded(v)}" for k, v in op.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines diagnose", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("experiment", nargs="?", default="braille_felif_fp_v0")
    parser.add_argument("--batch", type=int, default=8, help="samples in the fixed batch (8)")
    parser.add_argument("--split", default="train", choices=("train", "valid", "test"))
    parser.add_argument("--checkpoint", type=Path, help="a run's best.pt/last.pt: its weights")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ", ".join(VARIANTS) + " (all). The reference is "
        "bptt; without it, exact (its gradient equals BPTT's: tested), which makes a large "
        "--batch affordable",
    )
    add_override_option(parser)
    args = parser.parse_args(argv)
    try:
        config = cfg.load(args.experiment, args.overrides)
    except cfg.ConfigError as error:
        print(f"diagnose: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    task = make_task(config)
    index = list(range(min(args.batch, task.size(args.split))))
    inputs, labels, mask = task.batch(args.split, index, torch.device("cpu"))
    state_dict = None
    if args.checkpoint is not None:
        state_dict = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"]
    if not _felif_layers(models.build(config, 0)):
        print(f"diagnose: {config.name} has no FeLIF layer; nothing to compare", file=sys.stderr)
        return 2
    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or not ({"bptt", "exact"} & set(chosen)):
        print(
            f"diagnose: --variants {args.variants!r}: choose from {', '.join(VARIANTS)}, "
            "including bptt or exact (the reference)",
            file=sys.stderr,
        )
        return 2
    results = {}
    for name in chosen:
        variant = VARIANTS[name]
        label = variant[0] + (f" ({variant[1]})" if variant[1] else "")
        print(f"diagnose: {label} ...", file=sys.stderr, flush=True)
        # with BPTT in the comparison the fine path is torch's: forward values bit-identical
        backend = "torch" if "bptt" in chosen else None
        results[label] = gradients(config, inputs, labels, mask, task, variant, state_dict, backend)
    reference_label = "bptt" if "bptt" in results else "bruno (exact)"
    reference = results[reference_label]
    for label, result in results.items():
        if label == "coarse":  # its values are the coarse step's: another trajectory
            continue
        for name, spikes in result["spikes"].items():
            if not torch.equal(spikes, reference["spikes"][name]):
                print(
                    f"diagnose: {label} forward differs from {reference_label} in {name}",
                    file=sys.stderr,
                )
                return 1
    dt_ms = config.model.coarse_dt * 1e3
    weights = f"from {args.checkpoint}" if args.checkpoint else "at initialisation (seed 0)"
    payload = {
        "experiment": config.name,
        "setup": (
            f"{len(index)} {args.split} samples, weights {weights}, "
            f"{config.model.felif().fine_steps} fine steps per coarse step of {dt_ms:g} ms; "
            "cos / ratio: cosine similarity and norm ratio of a gradient against "
            f"{reference_label}'s"
            + ("" if reference_label == "bptt" else " (= BPTT's exact gradient, a tested identity)")
        ),
        "reference": reference_label,
        "parameter_names": list(reference["parameters"]),
        "variants": {label: compare(reference, r, dt_ms) for label, r in results.items()},
        "operating_point": operating_point(reference, labels),
        "config": cfg.dump(config),
    }
    from bruno.io import atomic_write_json, atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out / f"{config.name}.json", _finite(json.loads(json.dumps(payload, default=str)))
    )
    text = _markdown(payload)
    atomic_write_text(args.out / f"{config.name}.md", text)
    print(text)
    print(f"diagnose: wrote {args.out / (config.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
