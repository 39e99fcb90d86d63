"""`python -m pipelines report` on synthetic run directories: grouping, mean ± std, files."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines import config as cfg
from pipelines import report


def _run(
    root: Path,
    name: str,
    seed: int,
    task: str,
    group: str,
    metrics: dict,
    output="felif",
    sigma=0.0,
    kind="spiking",
    **model,
):
    """A finished run directory: a Braille LIF(150) -> ``output`` network, a JSB FeLIF(150) one,
    or (``kind="lstm"``) the JSB LSTM reference."""
    if kind == "lstm":
        network = {"kind": "lstm"}
    elif task == "braille":
        network = {
            "kind": "spiking",
            "hidden": {"neuron": {"kind": "lif", "variability_sigma": sigma}},
            "output": {"neuron": {"kind": output, "variability_sigma": sigma}},
        }
    else:
        network = {"kind": "spiking", "hidden": {"neuron": {"kind": "felif"}}}
    raw = {"task": task, "group": group, "seeds": [seed], "model": {**network, **model}}
    config = cfg.resolve(raw, name=name)
    run = root / f"{name}_s{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.dump(config)))
    base = {"seed": seed, "train_time_s": 4.0, "epochs_run": 2, "peak_rss_mb": 500.0}
    (run / "metrics.json").write_text(json.dumps({**base, **metrics}))
    (run / "metrics.csv").write_text("epoch,train_loss,valid_nll_per_step\n1,10.0,9.5\n2,9.0,9.0\n")


def test_report_tables_and_figures(tmp_path):
    train_dir, out = tmp_path / "train", tmp_path / "report"
    for seed, accuracy in ((0, 0.80), (1, 0.90), (2, 0.85)):
        _run(train_dir, "braille_felif", seed, "braille", "braille", {"test_accuracy": accuracy})
    _run(
        train_dir,
        "braille_lif",
        0,
        "braille",
        "braille",
        {"test_accuracy": 0.5},
        output="lif",
    )
    _run(
        train_dir,
        "jsb_felif",
        0,
        "jsb",
        "jsb",
        {"test_nll_per_step": 9.1, "test_frame_accuracy": 0.2},
    )
    _run(
        train_dir,
        "jsb_lstm",
        0,
        "jsb",
        "jsb",
        {"test_nll_per_step": 8.5, "test_frame_accuracy": 0.25},
        kind="lstm",
    )
    (train_dir / "unfinished_s0").mkdir()  # no metrics.json: ignored
    assert report.main(["--train-dir", str(train_dir), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## braille" in text and "## jsb" in text
    assert (
        "| braille_felif | LIF(150) -> FeLIF(27) [counts] | bruno, n=1000, "
        "implicit coarse gradient | fp "
        "| 0 | 3 (0,1,2) "
        "| 85.0 ± 5.0 |" in text
    )
    assert "| jsb_lstm | LSTM(150) |" in text and "8.500" in text and "25.0" in text
    for name in ("braille.csv", "jsb.csv", "braille.png", "jsb.png"):
        assert (out / name).is_file(), name
    records = {r["experiment"]: r for r in json.loads((out / "summary.json").read_text())}
    felif = records["braille_felif"]
    assert (felif["task"], felif["network"], felif["algorithm"]) == (
        "braille",
        "lif->felif",
        "bruno-implicit",
    )
    assert (felif["synapses"], felif["sigma"], felif["seeds"]) == ("fp", 0.0, [0, 1, 2])
    assert felif["values"] == [0.80, 0.90, 0.85] and felif["metric"] == "test_accuracy"
    assert abs(felif["mean"] - 0.85) < 1e-12 and abs(felif["std"] - 0.05) < 1e-12
    assert records["jsb_lstm"]["network"] == "lstm" and records["jsb_felif"]["network"] == "felif"
    assert (felif["readout"], records["jsb_felif"]["readout"]) == ("counts", "spikes")
    assert "unfinished" not in text


def test_report_without_runs(tmp_path, capsys):
    assert report.main(["--train-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_report_shows_stopped_runs(tmp_path):
    train_dir, out = tmp_path / "train", tmp_path / "report"
    _run(
        train_dir,
        "jsb_ok",
        0,
        "jsb",
        "algorithms",
        {"test_nll_per_step": 9.0, "test_frame_accuracy": 0.2},
    )
    raw = {"task": "jsb", "group": "algorithms", "model": {"kind": "lstm"}}
    config = cfg.resolve(raw, name="jsb_bad")
    run = train_dir / "jsb_bad_s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.dump(config)))
    reason = "non-finite gradient of synapses_in.weight at epoch 1 batch 1"
    (run / "failure.json").write_text(json.dumps({"seed": 0, "reason": reason}))
    assert report.main(["--train-dir", str(train_dir), "--out", str(out), "--no-figures"]) == 0
    text = (out / "report.md").read_text()
    assert "| jsb_bad |" in text and f"1 run(s) stopped: {reason}" in text


def test_braille_comparison_grid(tmp_path):
    """Networks as rows, synapse type and variability as columns, mean ± std (n seeds) per cell."""
    train_dir = tmp_path / "train"
    for name, output, precision, sigma, accuracies in (
        ("felif_fp", "felif", "fp", 0.0, (0.30, 0.40)),
        ("felif_rram", "felif", "rram", 0.1, (0.20,)),
        ("lif_fp", "lif", "fp", 0.0, (0.50, 0.60, 0.55)),
    ):
        for seed, accuracy in enumerate(accuracies):
            _run(
                train_dir,
                name,
                seed,
                "braille",
                "braille",
                {"test_accuracy": accuracy},
                output=output,
                sigma=sigma,
                synapse={"precision": precision},
            )
    entries = report.summarise(report.load_runs(train_dir))["braille"]
    grid = report.matrix(entries)
    lines = grid.splitlines()
    assert lines[2] == "| network, training | fp, σ = 0 | RRAM 3-bit (calibrated), σ = 0.1 |"
    felif = next(line for line in lines if line.startswith("| LIF(150) -> FeLIF"))
    assert felif.endswith("| 35.0 ± 7.1 (n=2) | 20.0 (n=1) |")
    lif = next(line for line in lines if line.startswith("| LIF(150) -> LIF"))
    assert lif.endswith("| 55.0 ± 5.0 (n=3) | - |")
    assert report.matrix(entries[:1]) is None  # one row and one column: no grid


def test_runs_of_an_older_config_format_are_skipped_with_a_reason(tmp_path, capsys):
    train_dir = tmp_path / "train"
    _run(train_dir, "new", 0, "braille", "braille", {"test_accuracy": 0.5})
    old = train_dir / "old_s0"
    old.mkdir()
    old_config = {"task": "braille", "name": "old", "model": {"neuron": "lif", "hidden": 128}}
    (old / "config.json").write_text(json.dumps(old_config))
    (old / "metrics.json").write_text(json.dumps({"seed": 0, "test_accuracy": 0.9}))
    runs = report.load_runs(train_dir)
    assert [run["config"].name for run in runs] == ["new"]
    assert "skipping" in capsys.readouterr().err


def test_runs_with_overrides_are_not_pooled_with_the_plain_ones(tmp_path):
    train_dir = tmp_path / "train"
    _run(train_dir, "felif", 0, "braille", "braille", {"test_accuracy": 0.3})
    _run(train_dir, "felif", 1, "braille", "braille", {"test_accuracy": 0.4})
    exact = {"output": {"neuron": {"kind": "felif", "coarse_gradient": "exact"}}}
    raw = {"task": "braille", "group": "braille", "seeds": [0]}
    raw["model"] = {"kind": "spiking", "hidden": {"neuron": {"kind": "lif"}}, **exact}
    run = train_dir / "felif_exact_s0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.dump(cfg.resolve(raw, name="felif"))))
    (run / "metrics.json").write_text(json.dumps({"seed": 0, "test_accuracy": 0.9}))
    entries = report.summarise(report.load_runs(train_dir))["braille"]
    assert sorted((e["name"], len(e["runs"])) for e in entries) == [
        ("felif", 2),
        ("felif_exact", 1),
    ]
    # a plain config in a run directory of its own name (train --run) is named after it too
    (train_dir / "felif_s1").rename(train_dir / "felif_again")
    entries = report.summarise(report.load_runs(train_dir))["braille"]
    assert sorted((e["name"], len(e["runs"])) for e in entries) == [
        ("felif", 1),
        ("felif_again", 1),
        ("felif_exact", 1),
    ]


def test_spike_rule_and_coarse_steps_are_named_in_the_algorithm():
    """A table row says how a FeLIF layer ran: coarse steps per frame and the circuit's reset."""
    named = {
        name: report.describe(cfg.load(name))["algorithm"]
        for name in (
            "braille_felif_rram_v0",
            "braille_felif_s4_rram_v0",
            "braille_felif_reset_rram_v0",
        )
    }
    assert named == {
        "braille_felif_rram_v0": "bruno-exact",
        "braille_felif_s4_rram_v0": "bruno-exact-s4",
        "braille_felif_reset_rram_v0": "bruno-exact-reset",
    }


def test_runs_are_archived_and_the_tables_rebuild_without_the_training_directory(tmp_path):
    train_dir, out = tmp_path / "train", tmp_path / "report"
    for seed, accuracy in ((0, 0.6), (1, 0.7)):
        _run(train_dir, "braille_felif", seed, "braille", "braille", {"test_accuracy": accuracy})
    (train_dir / "braille_felif_s0" / "best.pt").write_bytes(b"checkpoint")
    assert report.main(["--train-dir", str(train_dir), "--out", str(out), "--no-figures"]) == 0
    first = json.loads((out / "summary.json").read_text())
    archived = out / report.ARCHIVE / "braille_felif_s0"
    assert sorted(p.name for p in archived.iterdir()) == sorted(report.ARCHIVED_FILES)
    # results/ gone (a fresh clone): the archive alone gives the same records
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert report.main(["--train-dir", str(empty), "--out", str(out), "--no-figures"]) == 0
    assert json.loads((out / "summary.json").read_text()) == first
    # a rerun of one seed in the training directory wins over its archived copy
    (train_dir / "braille_felif_s1").rename(tmp_path / "old_s1")
    _run(train_dir, "braille_felif", 1, "braille", "braille", {"test_accuracy": 0.9})
    assert report.main(["--train-dir", str(train_dir), "--out", str(out), "--no-figures"]) == 0
    (record,) = json.loads((out / "summary.json").read_text())
    assert record["values"] == [0.6, 0.9]
    assert (
        json.loads((archived.parent / "braille_felif_s1" / "metrics.json").read_text())[
            "test_accuracy"
        ]
        == 0.9
    )


def test_earlier_records_without_archived_runs_are_kept_until_dropped(tmp_path):
    train_dir, out = tmp_path / "train", tmp_path / "report"
    _run(train_dir, "braille_lif", 0, "braille", "braille", {"test_accuracy": 0.5}, output="lif")
    out.mkdir()
    earlier = {
        "experiment": "braille_old",
        "task": "braille",
        "network": "lif->felif",
        "algorithm": "bruno-exact",
        "synapses": "fp",
        "sigma": 0.0,
        "readout": "counts",
        "seeds": [0, 1],
        "values": [0.4, 0.5],
        "mean": 0.45,
        "std": 0.0707,
        "metric": "test_accuracy",
    }
    stale = {**earlier, "experiment": "braille_lif", "mean": 0.1}  # remade now: replaced
    (out / "summary.json").write_text(json.dumps([earlier, stale]))
    assert report.main(["--train-dir", str(train_dir), "--out", str(out), "--no-figures"]) == 0
    records = {r["experiment"]: r for r in json.loads((out / "summary.json").read_text())}
    assert records["braille_old"] == {**earlier, "runs": "not archived"}
    assert records["braille_lif"]["mean"] == 0.5 and "runs" not in records["braille_lif"]
    text = (out / "report.md").read_text()
    assert "## Earlier results, runs not archived" in text
    assert (
        "| braille_old | lif->felif | bruno-exact | fp | 0 | 0,1 | test_accuracy | 45.0 ± 7.1 |"
        in text
    )
    argv = ["--train-dir", str(train_dir), "--out", str(out), "--no-figures", "--drop-unarchived"]
    assert report.main(argv) == 0
    assert [r["experiment"] for r in json.loads((out / "summary.json").read_text())] == [
        "braille_lif"
    ]


def test_unarchived_seeds_pool_with_new_seeds_of_the_same_experiment(tmp_path):
    """Seeds 0-1 of an experiment predate the archive (an earlier record), seed 2 is run now:
    the record and the grid cell count all three, seed 1's value stays the earlier one when it
    is not rerun, a rerun seed wins, and the pooling survives the next report (where only
    ``not_archived_seeds`` says which values have no run files). An experiment of a config with
    no run here joins the grid from its record alone."""
    train_dir, out = tmp_path / "train", tmp_path / "report"
    _run(train_dir, "braille_felif", 2, "braille", "braille", {"test_accuracy": 0.6})
    lif = {"output": "lif", "sigma": 0.1}
    _run(train_dir, "braille_lif", 0, "braille", "braille", {"test_accuracy": 0.7}, **lif)
    out.mkdir()
    earlier = {
        "experiment": "braille_felif",
        "task": "braille",
        "metric": "test_accuracy",
        "seeds": [0, 1],
        "values": [0.4, 0.5],
        "runs": "not archived",
    }
    # an experiment of ours none of whose runs is here: made from today's config
    gru = {**earlier, "experiment": "braille_gru", "seeds": [0, 2], "values": [0.7, 0.8]}
    (out / "summary.json").write_text(json.dumps([earlier, gru]))
    argv = ["--train-dir", str(train_dir), "--out", str(out), "--no-figures"]
    for _ in range(2):  # the second report reads the first one's summary.json
        assert report.main(argv) == 0
        records = {r["experiment"]: r for r in json.loads((out / "summary.json").read_text())}
        felif = records["braille_felif"]
        assert felif["seeds"] == [0, 1, 2] and felif["values"] == [0.4, 0.5, 0.6]
        assert felif["not_archived_seeds"] == [0, 1] and "runs" not in felif
        assert abs(felif["mean"] - 0.5) < 1e-12 and abs(felif["std"] - 0.1) < 1e-12
        assert "not_archived_seeds" not in records["braille_lif"]
        text = (out / "report.md").read_text()
        assert "| 50.0 ± 10.0 (n=3) |" in text and "3 (0*,1*,2)" in text
        assert report.UNARCHIVED_NOTE in text and "runs not archived" not in text
        assert records["braille_gru"]["network"] == "gru"
        assert records["braille_gru"]["not_archived_seeds"] == [0, 2]
        assert "| GRU(128), BPTT (autograd) | 75.0 ± 7.1 (n=2) | - |" in text
    _run(train_dir, "braille_felif", 1, "braille", "braille", {"test_accuracy": 0.9})
    assert report.main(argv) == 0
    records = {r["experiment"]: r for r in json.loads((out / "summary.json").read_text())}
    assert records["braille_felif"]["values"] == [0.4, 0.9, 0.6]
    assert records["braille_felif"]["not_archived_seeds"] == [0]


def test_a_row_names_the_neurons_non_default_physics():
    """Rows of one network kind differ by their neurons' physics: the display names what a run
    set away from the defaults (the summary's ``network`` stays the kind)."""
    shown = {
        name: report.describe(cfg.load(name, overrides))
        for name, overrides in (
            ("braille_outputs_leaky", []),
            ("braille_outputs_integrating_rail_nofilter_reset06", []),
            ("braille_felif_reset_fp_v0", ["model.output.neuron.reset_voltage=0.0"]),
        )
    }
    assert shown["braille_outputs_leaky"]["display"].startswith("LIF(128) -> LIF(27) [")
    railed = shown["braille_outputs_integrating_rail_nofilter_reset06"]
    assert "LIF(27: τ_mem 10 s, τ_syn 0 s, rail at -2, reset to -0.6)" in railed["display"]
    assert railed["network"] == "lif->lif"
    assert "FeLIF(27: reset to 0 V)" in shown["braille_felif_reset_fp_v0"]["display"]
