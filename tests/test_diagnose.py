"""`python -m pipelines diagnose`: gradient agreement against BPTT, checked on the identity it must
reproduce (with one fine step per coarse step BRUNO's "euler" gradient *is* BPTT's)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines import datasets as ds
from pipelines import diagnose

IN_CI = os.environ.get("CI", "").strip().lower() == "true"


@pytest.fixture(autouse=True)
def _real_braille():
    path = ds.data_dir() / "braille" / "data_braille_letters_th10"
    if not path.exists():
        message = f"real data missing: {path} (set {ds.DATA_DIR_ENV})"
        if IN_CI:
            pytest.fail(message + " - in CI a missing dataset is a failure")
        pytest.skip(message)


def test_diagnosis_reproduces_the_n1_identity_and_writes_its_report(tmp_path, capsys):
    args = ["--batch", "2", "--out", str(tmp_path), "--set", "data.n_steps=12"]
    assert diagnose.main([*args, "--set", "model.output.neuron.fine_steps=1"]) == 0
    report = json.loads((tmp_path / "braille_felif_fp_v0.json").read_text())
    euler = report["variants"]["bruno (euler)"]
    for name, stats in euler["parameters"].items():
        assert stats["cosine"] == pytest.approx(1.0, abs=1e-9), name
        assert stats["norm_ratio"] == pytest.approx(1.0, rel=1e-6), name
    drive = euler["layers"]["outputs"]["drive"]
    assert drive["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert report["variants"]["bptt"]["loss"] == euler["loss"]
    exact = report["variants"]["bruno (exact)"]  # BPTT's gradient at any fine_steps
    for name, stats in exact["parameters"].items():
        assert stats["cosine"] == pytest.approx(1.0, abs=1e-6), name
    op = report["operating_point"]["outputs"]
    assert op["coarse_steps"] == 12 and 0.0 <= op["silent_fraction"] <= 1.0
    assert (tmp_path / "braille_felif_fp_v0.md").read_text().startswith("# Gradient diagnosis")


def test_diagnosis_without_bptt_compares_against_exact_and_reports_the_operating_point(
    tmp_path, capsys
):
    args = ["--batch", "3", "--out", str(tmp_path), "--set", "data.n_steps=10"]
    assert diagnose.main([*args, "--variants", "exact,implicit", "--split", "valid"]) == 0
    report = json.loads((tmp_path / "braille_felif_fp_v0.json").read_text())
    assert report["reference"] == "bruno (exact)"
    assert set(report["variants"]) == {"bruno (exact)", "bruno (implicit)"}
    for stats in report["variants"]["bruno (exact)"]["parameters"].values():
        assert stats["cosine"] == pytest.approx(1.0, abs=1e-12)
    op = report["operating_point"]["outputs"]
    assert 0.0 <= op["at_negative_clip_fraction"] <= 1.0
    assert 0.0 <= op["batch_accuracy"] <= 1.0
    assert op["top_count_margin_mean"] >= 0.0
    assert op["labelled_class_count_mean"] <= op["spikes_per_neuron_per_sample_max"]
    assert "vs bruno (exact)" in (tmp_path / "braille_felif_fp_v0.md").read_text()


@pytest.mark.parametrize("variants", ["implicit,coarse", "exact,bogus"])
def test_diagnosis_refuses_variants_without_a_reference_or_unknown(variants, tmp_path, capsys):
    assert diagnose.main(["--variants", variants, "--out", str(tmp_path)]) == 2
    assert "--variants" in capsys.readouterr().err


def test_diagnosis_refuses_a_network_without_felif(tmp_path, capsys):
    assert diagnose.main(["braille_lif_fp_v0", "--out", str(tmp_path)]) == 2
    assert "no FeLIF layer" in capsys.readouterr().err
