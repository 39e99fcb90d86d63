"""The files of a training run: atomic checkpoints (model, optimiser, RNG states), JSON and CSV
records, learning curves, and the process's peak memory."""

from __future__ import annotations

import csv
import io
import random
import resource
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: Path, payload: dict) -> None:
    from bruno.io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, payload) -> None:
    from bruno.io import atomic_write_json

    atomic_write_json(path, payload)


def write_csv(path: Path, rows: list[dict]) -> None:
    from bruno.io import atomic_write_text

    if not rows:
        return
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def plot_curves(path: Path, history: list[dict], title: str, select_key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    valid_loss = "valid_nll_per_step" if "valid_nll_per_step" in history[0] else "valid_loss"
    axes[0].plot(epochs, [row[valid_loss] for row in history], "s-", label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("NLL per step (nats)" if "nll" in valid_loss else "cross-entropy")
    axes[0].legend()
    second = "valid_frame_accuracy" if "valid_frame_accuracy" in history[0] else "valid_accuracy"
    axes[1].plot(epochs, [row[second] for row in history], "s-", color="C1")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(second.replace("_", " "))
    fig.suptitle(title)
    fig.tight_layout()
    from bruno.io import atomic_save_figure

    atomic_save_figure(fig, path, dpi=110)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
