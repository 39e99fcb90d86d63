"""Training machinery on tiny configs (seconds each): outputs, config validation, resume after a
kill, NaN handling, DistributedDataParallel equivalence. Needs the real JSB data (see
test_datasets: skipped locally when missing, a failure with CI=true)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines import config as cfg
from pipelines import datasets as ds
from pipelines import loop, train
from tests import fault_injection

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() == "true"

TINY = {
    "description": "tiny LSTM run for the tests",
    "task": "jsb",
    "seeds": [0],
    "data": {"grid": "quarter", "max_train": 12, "max_eval": 6, "max_frames": 16},
    "model": {"kind": "lstm", "hidden": 8},
    "optim": {"name": "adamax", "lr": 0.01, "batch_size": 4, "epochs": 3, "eval_batch_size": 4},
}


@pytest.fixture(autouse=True)
def _real_jsb():
    path = ds.data_dir() / "jsb/jsb-chorales-quarter.json"
    if not path.is_file():
        message = f"real data missing: {path} (set {ds.DATA_DIR_ENV})"
        if IN_CI:
            pytest.fail(message + " - in CI a missing dataset is a failure")
        pytest.skip(message)


def _config(tmp_path: Path, **changes) -> Path:
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = raw
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["BRUNO_DATA_DIR"] = str(ds.data_dir())
    env["PYTHONPATH"] = str(REPO)
    return env


def _train_subprocess(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    args = [*args, "--no-progress"]
    return subprocess.run(
        fault_injection.command(fault, args)
        if fault
        else [sys.executable, "-m", "pipelines", "train", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shipped_configs_are_valid():
    names = cfg.list_experiments()
    assert cfg.DEFAULT_EXPERIMENT in names
    for name in names:
        config = cfg.load(name)
        assert config.name == name and config.task in ("jsb", "braille")
        assert cfg.resolve(cfg.dump(config), name="other") == config  # config.json reads back


def test_families_expand_to_named_experiments(tmp_path):
    names = cfg.list_experiments()
    braille = [n for n in names if n.startswith(("braille_felif", "braille_lif", "braille_rlif"))]
    assert len(braille) == 24 and "braille_rlif_rram_v10" in braille
    assert cfg.load("braille_felif_reset_rram_v0").model.output.neuron.spike_rule == "reset"
    s4 = cfg.load("braille_felif_s4_rram_v0").model.output.neuron
    assert (s4.coarse_steps_per_frame, s4.fine_steps) == (4, 250)  # 1 us fine steps
    assert {f"jsb_alg_{m}" for m in ("bptt", "checkpoint", "bruno", "coarse")} <= set(names)
    rlif = cfg.load("braille_rlif_rram_v10")
    assert [n.kind for n in rlif.model.neurons()] == ["rlif", "lif"]
    assert rlif.model.synapse.precision == "rram"
    assert [n.variability_sigma for n in rlif.model.neurons()] == [0.1, 0.1]
    assert rlif.optim.epochs == 40 and rlif.model.hidden.neuron.recurrent_gain == 10.0
    assert "recurrent LIF" in rlif.description and rlif.group == "braille"
    both = cfg.load("braille_rlif_felif_rram_v10").model
    assert [n.kind for n in both.neurons()] == ["rlif", "felif"]
    assert [n.variability_sigma for n in both.neurons()] == [0.1, 0.1]
    assert (both.output.voltage_readout, both.output.gain) == (0.3, 10.0)
    # an axis may set keys inside an object an earlier axis wrote
    felif = cfg.load("braille_felif_fp_v10").model.output.neuron
    assert (felif.kind, felif.algorithm, felif.variability_sigma) == ("felif", "bruno", 0.1)
    # a family file given by path is many experiments: the error names them
    family = tmp_path / "fam.json"
    family.write_text(json.dumps({**TINY, "matrix": {"size": {"s": {"model.hidden": 4}, "m": {}}}}))
    with pytest.raises(cfg.ConfigError, match="family of 2 experiments; name one: fam_s, fam_m"):
        cfg.load(str(family))
    assert cfg.expand(json.loads(family.read_text()), "fam")["fam_s"]["model"]["hidden"] == 4
    family.write_text(json.dumps({**TINY, "matrix": {"size": ["s", "m"]}}))
    with pytest.raises(cfg.ConfigError, match="'matrix' must map each axis"):
        cfg.load(str(family))


LIF_NET = {"kind": "spiking", "hidden": {"size": 4, "neuron": {"kind": "lif"}}}
FELIF_NET = {"kind": "spiking", "hidden": {"size": 4, "neuron": {"kind": "felif"}}}


@pytest.mark.parametrize(
    "model, where",
    [
        ({**LIF_NET, "hidden": {"neuron": {"kind": "lif", "algorithm": "bruno"}}}, "algorithm"),
        ({**LIF_NET, "hidden": {"neuron": {"kind": "lif", "fine_steps": 10}}}, "fine_steps"),
        ({"kind": "lstm", "coarse_gradient": "euler"}, "model.coarse_gradient"),
        ({**FELIF_NET, "hidden": {"neuron": {"kind": "felif", "tau_mem": 0.01}}}, "tau_mem"),
        ({**LIF_NET, "output": {"neuron": {"kind": "lif"}}}, "model.output"),  # JSB: no output
    ],
)
def test_an_option_no_layer_reads_cannot_be_written(model, where):
    """Options sit under the layer that reads them: written elsewhere they are unknown keys."""
    with pytest.raises(cfg.ConfigError, match=f"{where}: unknown key here"):
        cfg.resolve({"task": "jsb", "model": model}, name="x")


def test_felif_options_reach_the_layer():
    from bruno.surrogate import FELIF_SLOPE_PER_VOLT
    from pipelines import models

    config = cfg.load(
        "jsb_alg_bruno",
        [
            'model.hidden.neuron.coarse_gradient="euler"',
            'model.hidden.neuron.fine_backend="torch"',
            "model.hidden.neuron.surrogate_slope=2.5",
        ],
    )
    layer = models.build(config, 0).neurons
    assert (layer.coarse_gradient, layer.fine_backend) == ("euler", "torch")
    assert layer.surrogate_slope == 2.5
    # a reset target (circuit what-if) replaces the preset's -1.5 V and nothing else
    moved = models.build(cfg.load("jsb_alg_bruno", ["model.hidden.neuron.reset_voltage=0.0"]), 0)
    device = models.build(cfg.load("jsb_alg_bruno"), 0).neurons.base_parameters
    assert device.reset_voltage == -1.5
    assert moved.neurons.base_parameters == dataclasses.replace(device, reset_voltage=0.0)
    default = models.build(cfg.load("jsb_alg_bruno"), 0).neurons
    assert (default.coarse_gradient, default.surrogate_slope) == ("implicit", FELIF_SLOPE_PER_VOLT)


def test_run_writes_outputs(tmp_path):
    path = _config(tmp_path)
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    run = tmp_path / "out" / "tiny_s0"
    for name in ("config.json", "metrics.csv", "metrics.json", "last.pt", "best.pt", "curves.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_nll_per_step"] > 0 and 0 <= metrics["test_frame_accuracy"] <= 1
    assert metrics["epochs_run"] == 3 and metrics["seed"] == 0
    assert metrics["host"]["torch"] == torch.__version__ and metrics["host"]["threads"] >= 1
    assert metrics["host"]["cpu"] and metrics["host"]["torch_cpu_capability"]
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,train_loss,valid_nll_per_step")
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["model"]["kind"] == "lstm" and resolved["optim"]["grad_clip"] == 1.0
    # a finished run is not repeated
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"optim__learning_rate": 0.1}, "optim.learning_rate: unknown key"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"optim__lr": -1.0}, "optim.lr: Input should be greater than or equal to 0"),
        ({"optim__epochs": "ten"}, "optim.epochs: Input should be a valid integer"),
        ({"optim__epochs": True}, "optim.epochs: Input should be a valid integer"),
        ({"model": {**FELIF_NET, "hidden": {"neuron": {"kind": "izh"}}}}, "model.hidden.neuron"),
        (
            {"model": {**FELIF_NET, "hidden": {"neuron": {"kind": "felif", "algorithm": "x"}}}},
            "model.hidden.neuron.algorithm: Input should be 'bruno', 'bptt'",
        ),
        ({"model": {**LIF_NET, "synapse": {"precision": "2bit"}}}, "model.synapse.precision"),
        ({"seeds": [1, 1]}, "seeds: a non-empty list of distinct integers"),
        ({"task": "mnist"}, "task"),
        ({"optim__lr": float("nan")}, "optim.lr"),
        (
            {
                "model": {
                    **FELIF_NET,
                    "hidden": {"neuron": {"kind": "felif", "coarse_gradient": "explicit"}},
                }
            },
            "model.hidden.neuron.coarse_gradient: Input should",
        ),
        (
            {
                "model": {
                    **FELIF_NET,
                    "hidden": {"neuron": {"kind": "felif", "fine_backend": "cuda"}},
                }
            },
            "model.hidden.neuron.fine_backend",
        ),
        (
            {
                "model": {
                    **LIF_NET,
                    "hidden": {
                        "neuron": {"kind": "lif", "reset": "subtract", "reset_potential": -0.6}
                    },
                }
            },
            "model.hidden.neuron: reset_potential is where a 'zero' reset sets v",
        ),
    ],
)
def test_bad_config_is_rejected_before_any_work(tmp_path, capsys, change, complaint):
    path = _config(tmp_path, **change)
    out = tmp_path / "out"
    assert train.main([str(path), "--out", str(out)]) == 2
    assert complaint in capsys.readouterr().err
    assert not out.exists()


def test_bad_override_is_rejected(tmp_path, capsys):
    path = _config(tmp_path)
    assert train.main([str(path), "--out", str(tmp_path), "--set", "optim.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "optim.batch_size: Input should be greater than or equal to 1" in err


def test_run_name_that_is_a_path_is_rejected(tmp_path, capsys):
    """`--run results/train/x` would nest under --out (results/train/results/train/x)."""
    path = _config(tmp_path)
    out = tmp_path / "out"
    assert train.main([str(path), "--out", str(out), "--seed", "0", "--run", "a/b"]) == 2
    assert "--run is a directory name under --out" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_experiment(capsys):
    assert train.main(["no_such_experiment"]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_result(tmp_path):
    path = _config(tmp_path)
    assert train.main([str(path), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    killed = _train_subprocess([str(path), "--out", str(tmp_path / "b")], fault="kill@2.2")
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "b" / "tiny_s0"
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1
    resumed = _train_subprocess([str(path), "--out", str(tmp_path / "b")])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming tiny_s0 after epoch 1" in resumed.stdout
    a = json.loads((tmp_path / "a" / "tiny_s0" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    for key in ("test_nll_per_step", "test_frame_accuracy", "valid_nll_per_step", "best_epoch"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path)
    monkeypatch.setattr(loop, "BATCH_HOOKS", [fault_injection.fault_hook("nan@2.1")])
    out = tmp_path / "out"
    assert train.main([str(path), "--out", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "STOPPED - non-finite loss at epoch 2 batch 1" in err and "last.pt" in err
    run = out / "tiny_s0"
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "metrics.json").exists()
    # once the cause is gone the run resumes from that checkpoint and finishes
    monkeypatch.setattr(loop, "BATCH_HOOKS", [])
    assert train.main([str(path), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3


def test_resume_refuses_a_different_config(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path)
    monkeypatch.setattr(loop, "BATCH_HOOKS", [fault_injection.fault_hook("nan@2.1")])
    out = tmp_path / "out"
    assert train.main([str(path), "--out", str(out), "--no-progress"]) == 3
    monkeypatch.setattr(loop, "BATCH_HOOKS", [])
    # a reworded description is the same experiment: the run resumes and finishes
    reworded = [str(path), "--out", str(out), "--no-progress", "--set", 'description="reworded"']
    assert train.main(reworded) == 0 and "different config" not in capsys.readouterr().err
    args = [str(path), "--out", str(out), "--no-progress", "--set", "optim.lr=0.02"]
    assert train.main(args) == 2
    assert "different config" in capsys.readouterr().err
    assert train.main(args + ["--fresh"]) == 0


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="no torchrun",
)
def test_ddp_two_cpu_processes_equal_one(tmp_path):
    # odd sizes on purpose: shards of unequal size must still give the global-batch gradient
    path = _config(tmp_path, data__max_train=11, optim__batch_size=5, optim__epochs=2)
    assert train.main([str(path), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = _env()
    env["BRUNO_DEVICE"] = "cpu"
    double = subprocess.run(
        [
            torchrun,
            "--nproc_per_node=2",
            "--master_port=0",
            "--standalone",
            "-m",
            "pipelines",
            "train",
            str(path),
            "--out",
            str(tmp_path / "two"),
            "--no-progress",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "tiny_s0" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "tiny_s0" / "metrics.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    for key in ("test_nll_per_step", "test_frame_accuracy", "valid_nll_per_step"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    ta = torch.load(tmp_path / "one" / "tiny_s0" / "last.pt", weights_only=False)["model"]
    tb = torch.load(tmp_path / "two" / "tiny_s0" / "last.pt", weights_only=False)["model"]
    for name in ta:
        assert torch.allclose(ta[name], tb[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize(
    "task, model",
    [
        ("jsb", {"hidden": {"size": 8, "neuron": {"kind": "felif", "fine_steps": 10}}}),
        ("jsb", {"hidden": {"size": 8, "neuron": {"kind": "lif"}}}),
        (
            "braille",
            {
                "hidden": {"size": 8, "neuron": {"kind": "rlif", "variability_sigma": 0.1}},
                "output": {"neuron": {"kind": "felif", "fine_steps": 10, "variability_sigma": 0.1}},
                "synapse": {"precision": "rram"},
            },
        ),
        (
            "braille",
            {
                "hidden": {"size": 8, "neuron": {"kind": "lif"}},
                "output": {"neuron": {"kind": "lif"}},
                "synapse": {"precision": "3bit"},
            },
        ),
        ("braille", {"kind": "gru", "hidden": 8}),
        ("jsb", {"kind": "gru", "hidden": 8}),
    ],
)
def test_spiking_networks_train_end_to_end(tmp_path, task, model):
    if task == "braille" and not (ds.data_dir() / ds.BRAILLE_FILE).is_file():
        if IN_CI:
            pytest.fail("real Braille data missing - in CI a missing dataset is a failure")
        pytest.skip("real Braille data missing")
    raw = {
        "task": task,
        "seeds": [0],
        "model": {"kind": "spiking", **model},
        "optim": {"batch_size": 4, "epochs": 1, "eval_batch_size": 32},
        "data": (
            {"max_train": 4, "max_eval": 2, "max_frames": 6}
            if task == "jsb"
            else {"n_steps": 10, "max_train": 27, "max_eval": 27, "augment": {"time_shift": 1}}
        ),
    }
    path = tmp_path / "spiking.json"
    path.write_text(json.dumps(raw))
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "out" / "spiking_s0" / "metrics.json").read_text())
    key = "test_nll_per_step" if task == "jsb" else "test_accuracy"
    assert key in metrics and metrics[key] == metrics[key]  # finite, not NaN


def test_model_config_reaches_the_neurons():
    """A LIF/RLIF neuron config and ``coarse_dt`` set the neurons; an RLIF layer's recurrent
    weights get the configured synapse precision (calibrated RRAM here), with no bias, and its
    recurrent gain; the config defaults are the library's."""
    from bruno.lif import LIFParameters
    from bruno.surrogate import LIF_SLOPE
    from pipelines import models, schema

    default = schema.LIFNeuron(kind="lif")
    library = LIFParameters()
    assert (default.surrogate_slope, default.tau_mem, default.tau_syn) == (
        LIF_SLOPE,
        library.tau_mem,
        library.tau_syn,
    )
    lif = {
        "tau_mem": 0.03,
        "tau_syn": 0.0,
        "threshold": 0.5,
        "reset": "subtract",
        "surrogate_slope": 7.0,
    }
    raw = {
        "task": "braille",
        "model": {
            "kind": "spiking",
            "coarse_dt": 2e-3,
            "synapse": {"precision": "rram"},
            "hidden": {"size": 6, "neuron": {"kind": "rlif", "recurrent_gain": 3.0, **lif}},
            "output": {"neuron": {"kind": "lif", **lif}},
        },
    }
    net = models.build(cfg.resolve(raw, name="t"), 0)
    for layer in (net.hidden, net.outputs):
        p = layer.parameters_
        assert (p.tau_mem, p.tau_syn, p.threshold, p.reset, p.dt) == (
            0.03,
            0.0,
            0.5,
            "subtract",
            2e-3,
        )
        assert layer.surrogate_slope == 7.0
    recurrent = net.hidden.recurrent_weights
    assert recurrent.precision == "rram" and recurrent.bias is None
    assert net.hidden.recurrent_gain == 3.0
    assert recurrent.weight.shape == (6, 6)


@pytest.mark.parametrize("neuron", [{"kind": "lif"}, {"kind": "felif", "fine_steps": 20}])
def test_voltage_readout_adds_the_mean_membrane_voltage(neuron):
    """logits = readout_scale x counts + voltage_readout x the output membrane voltage averaged
    over the sample (the recorded end-of-step voltage, before the reset); 0 leaves the counts."""
    from pipelines import models

    raw = {
        "task": "braille",
        "model": {
            "kind": "spiking",
            "hidden": {"size": 6, "gain": 200.0, "neuron": {"kind": "lif"}},
            "output": {
                "gain": 10.0,
                "readout_scale": 0.3,
                "voltage_readout": 0.7,
                "neuron": neuron,
            },
        },
    }
    net = models.build(cfg.resolve(raw, name="t"), 0)
    events = (
        torch.rand(12, 3, models.BRAILLE_CHANNELS, generator=torch.Generator().manual_seed(1)) < 0.3
    ).float()
    net.outputs.record_state = True
    logits, aux = net(events)
    voltage = net.outputs.last_v
    expected = 0.3 * aux["output_spikes"].sum(0) + 0.7 * voltage.mean(0)
    assert torch.equal(logits, expected)
    assert float(voltage.std()) > 0
    logits.sum().backward()
    assert net.synapses_out.weight.grad.abs().sum() > 0
    counts_only = models.build(
        cfg.resolve(
            {
                **raw,
                "model": {
                    **raw["model"],
                    "output": {**raw["model"]["output"], "voltage_readout": 0.0},
                },
            },
            name="t",
        ),
        0,
    )
    logits0, aux0 = counts_only(events)
    assert torch.equal(logits0, 0.3 * aux0["output_spikes"].sum(0))
    assert torch.equal(aux0["output_spikes"], aux["output_spikes"])


@pytest.mark.parametrize(
    "neuron, unit",
    [({"kind": "lif", "threshold": 0.5}, 0.5), ({"kind": "felif", "fine_steps": 20}, 5.0)],
)
def test_jsb_voltage_readout_reads_the_membrane_through_a_second_array(neuron, unit):
    """logits = synapses_out(spikes) + synapses_voltage(v / unit), v the recorded end-of-frame
    membrane voltage; the second array has no bias; off, the network is the spike readout alone."""
    from pipelines import models

    raw = {
        "task": "jsb",
        "model": {
            "kind": "spiking",
            "voltage_readout": True,
            "hidden": {"size": 7, "gain": 10.0, "neuron": neuron},
        },
    }
    net = models.build(cfg.resolve(raw, name="t"), 0)
    assert net.synapses_voltage.bias is None and net.voltage_unit == unit
    notes = (torch.rand(9, 2, 54, generator=torch.Generator().manual_seed(2)) < 0.1).float()
    net.neurons.record_state = True
    logits, aux = net(notes)
    expected = net.synapses_out(aux["spikes"]) + net.synapses_voltage(net.neurons.last_v / unit)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-6)
    logits.sum().backward()
    assert net.synapses_voltage.weight.grad.abs().sum() > 0
    plain = models.build(
        cfg.resolve({**raw, "model": {**raw["model"], "voltage_readout": False}}, name="t"), 0
    )
    assert plain.synapses_voltage is None
    assert torch.equal(plain(notes)[0], net.synapses_out(aux["spikes"]).detach())


def test_jsb_readout_dropout_acts_in_training_only():
    """Evaluation: the network without dropout, to the bit. Training: each spike and voltage the
    readout reads is dropped with probability p and the survivors scaled by 1 / (1 - p)."""
    from pipelines import models

    raw = {
        "task": "jsb",
        "model": {
            "kind": "spiking",
            "voltage_readout": True,
            "readout_dropout": 0.5,
            "hidden": {"size": 40, "gain": 10.0, "neuron": {"kind": "lif", "threshold": 0.5}},
        },
    }
    net = models.build(cfg.resolve(raw, name="t"), 0)
    plain = models.build(
        cfg.resolve({**raw, "model": {**raw["model"], "readout_dropout": 0.0}}, name="t"), 0
    )
    notes = (torch.rand(30, 4, 54, generator=torch.Generator().manual_seed(2)) < 0.2).float()
    net.eval(), plain.eval()
    assert torch.equal(net(notes)[0], plain(notes)[0])
    net.train()
    net.synapses_voltage = None  # the spike readout alone: logits = W (mask * spikes) * 2 + b
    torch.manual_seed(0)
    logits, aux = net(notes)
    spikes = aux["spikes"]
    torch.manual_seed(0)
    mask = torch.nn.functional.dropout(torch.ones_like(spikes), 0.5)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    assert torch.allclose(logits, net.synapses_out(spikes * mask), atol=1e-5)
    assert not torch.allclose(logits, net.synapses_out(spikes), atol=1e-3)


def test_braille_hidden_dropout_acts_on_the_output_synapses_in_training_only():
    """Evaluation: the network without dropout, to the bit. Training: the output layer receives
    the hidden spikes with each dropped with probability p and the survivors scaled by
    1 / (1 - p); the hidden spikes themselves (and the recurrence inside the layer) unchanged."""
    from pipelines import models

    raw = {
        "task": "braille",
        "model": {
            "kind": "spiking",
            "hidden_dropout": 0.5,
            "hidden": {"size": 32, "gain": 20.0, "neuron": {"kind": "rlif"}},
            "output": {"gain": 20.0, "voltage_readout": 0.0, "neuron": {"kind": "lif"}},
        },
    }
    net = models.build(cfg.resolve(raw, name="t"), 0)
    plain = models.build(
        cfg.resolve({**raw, "model": {**raw["model"], "hidden_dropout": 0.0}}, "t"), 0
    )
    events = (torch.rand(40, 3, 24, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    net.eval(), plain.eval()
    assert torch.equal(net(events)[0], plain(events)[0])
    net.train(), plain.train()
    torch.manual_seed(0)
    _, aux = net(events)
    spikes = aux["spikes"]
    assert torch.equal(spikes, plain(events)[1]["spikes"]) and spikes.sum() > 0
    torch.manual_seed(0)
    mask = torch.nn.functional.dropout(torch.ones_like(spikes), 0.5)
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    drive = net.output_gain * net.synapses_out(spikes * mask)
    assert torch.equal(aux["output_spikes"], net.outputs(drive))
    assert not torch.equal(aux["output_spikes"], plain(events)[1]["output_spikes"])
