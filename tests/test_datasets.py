"""Dataset loaders: the real data (counts, shapes, balance, split) and the error paths.

Real-data tests read ``$BRUNO_DATA_DIR`` (the Makefile defaults it to <repo>/data; CI points it at
../shared/data). Missing data is a skip locally and a failure when ``CI=true``. No test touches
the network: download tests use a throw-away HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pickle
import socket
import threading

import numpy as np
import pytest
import torch

from pipelines import datasets as ds
from tests.conftest import need_data


@pytest.fixture(scope="module")
def jsb():
    need_data("jsb/jsb-chorales-quarter.json")
    return ds.load_jsb("quarter", download=False)


@pytest.fixture(scope="module")
def braille():
    need_data(ds.BRAILLE_FILE)
    return ds.load_braille(n_steps=50, split_seed=0, download=False)


# ---------------------------------------------------------------------------------------- JSB


@pytest.mark.data
def test_jsb_counts_and_shapes(jsb):
    assert {split: len(jsb[split]) for split in ds.JSB_SPLITS} == {
        "train": 229,
        "valid": 76,
        "test": 77,
    }
    lengths = {split: [roll.shape[0] for roll in jsb[split]] for split in ds.JSB_SPLITS}
    assert (min(lengths["train"]), max(lengths["train"])) == (25, 129)  # as PROVENANCE.md says
    assert max(lengths["test"]) == 160 and sum(lengths["test"]) == 4725
    for split in ds.JSB_SPLITS:
        for roll in jsb[split]:
            assert roll.dtype == torch.float32 and roll.shape[1] == ds.JSB_NOTES == 54
            assert set(torch.unique(roll).tolist()) <= {0.0, 1.0}
    every = torch.cat([roll for split in ds.JSB_SPLITS for roll in jsb[split]])
    # the lowest (43) and highest (96) notes both occur: the 54-note range is tight
    assert every[:, 0].sum() > 0 and every[:, -1].sum() > 0
    assert 3.0 < every.sum(1).mean() < 4.1  # four-part chorales


@pytest.mark.data
def test_jsb_roll_matches_json(jsb):
    raw = json.loads((ds.data_dir() / "jsb/jsb-chorales-quarter.json").read_text())
    chorale = raw["test"][5]
    roll = jsb["test"][5]
    for step, notes in enumerate(chorale):
        assert sorted(np.flatnonzero(roll[step].numpy()) + ds.JSB_NOTE_MIN) == sorted(notes)


@pytest.mark.data
@pytest.mark.parametrize("grid", ["8th", "16th"])
def test_jsb_other_grids(grid):
    need_data(f"jsb/jsb-chorales-{grid}.json")
    data = ds.load_jsb(grid, download=False)  # transposed: window 36..89
    assert [len(data[s]) for s in ds.JSB_SPLITS] == [229, 76, 77]
    factor = {"8th": 2, "16th": 4}[grid]
    assert min(roll.shape[0] for roll in data["train"]) == 25 * factor


def test_jsb_original_pickle_format(tmp_path):
    raw = {
        "train": [[(60, 64, 67), (62, 65)], [(43,), (96,), ()]],
        "valid": [[[48, 60], [50]]],
        "test": [[np.array([55.0, 72.0]), np.array([57.0])]],
    }
    path = tmp_path / "JSB_Chorales.pickle"
    path.write_bytes(pickle.dumps(raw, protocol=2))
    data = ds.load_jsb(path=path)
    assert [len(data[s]) for s in ds.JSB_SPLITS] == [2, 1, 1]
    assert data["train"][1][0, 0] == 1 and data["train"][1][1, 53] == 1
    assert data["train"][1][2].sum() == 0
    assert data["test"][0].shape == (2, 54) and data["test"][0][0].sum() == 2
    # the JSON rendering of the same content loads identically
    json_path = tmp_path / "same.json"
    json_path.write_text(
        json.dumps({k: [[list(map(int, f)) for f in c] for c in v] for k, v in raw.items()})
    )
    other = ds.load_jsb(path=json_path)
    for split in ds.JSB_SPLITS:
        for a, b in zip(data[split], other[split], strict=True):
            assert torch.equal(a, b)


def test_jsb_batch_next_frame():
    a = torch.eye(54)[:4]
    b = torch.eye(54)[10:13]
    inputs, targets, mask = ds.jsb_batch([a, b])
    assert inputs.shape == targets.shape == (3, 2, 54) and mask.shape == (3, 2)
    assert torch.equal(inputs[:, 0], a[:-1]) and torch.equal(targets[:, 0], a[1:])
    assert mask[:, 1].tolist() == [1, 1, 0] and targets[2, 1].sum() == 0


def test_jsb_out_of_range_note_is_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": [[[30]]], "valid": [], "test": []}))
    with pytest.raises(ds.DatasetError, match="outside MIDI 43..96"):
        ds.load_jsb(path=path)


# ------------------------------------------------------------------------------------ Braille


@pytest.mark.data
def test_braille_counts_shapes_and_events(braille):
    assert braille.inputs.shape == (5400, 50, 24) and braille.inputs.dtype == torch.float32
    assert braille.labels.shape == (5400,)
    assert torch.bincount(braille.labels, minlength=27).tolist() == [200] * 27
    # binning loses no event: PROVENANCE.md gives 4..111 events per sample, mean 40.9
    per_sample = braille.inputs.sum((1, 2))
    assert per_sample.min() == 4 and per_sample.max() == 111
    assert abs(per_sample.mean().item() - 40.9) < 0.05
    raw = ds.load_braille_events(download=False)
    first = raw[0]
    expected = sum(len(times) for taxel in first["events"] for times in taxel)
    assert braille.inputs[0].sum() == expected


@pytest.mark.data
def test_braille_split_stratified_disjoint_deterministic(braille):
    splits = {k: v.numpy() for k, v in braille.splits.items()}
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 3780, "valid": 540, "test": 1080}
    union = np.concatenate(list(splits.values()))
    assert len(np.unique(union)) == 5400  # disjoint and complete
    labels = braille.labels.numpy()
    for name, per_class in (("train", 140), ("valid", 20), ("test", 40)):
        assert np.bincount(labels[splits[name]], minlength=27).tolist() == [per_class] * 27
    again = ds.load_braille(n_steps=10, split_seed=0, download=False)
    for name in splits:
        assert np.array_equal(again.splits[name].numpy(), splits[name])
    other = ds.load_braille(n_steps=10, split_seed=1, download=False)
    assert not np.array_equal(other.splits["test"].numpy(), splits["test"])


@pytest.mark.data
def test_braille_binning_resolution_preserves_counts(braille):
    coarse = ds.load_braille(n_steps=5, download=False)
    assert coarse.inputs.shape == (5400, 5, 24)
    assert torch.equal(coarse.inputs.sum(1), braille.inputs.sum(1))


def test_bin_events_edges():
    events = [[[], []] for _ in range(12)]
    events[0][0] = [0.0, 0.0044, 1.3]  # last event exactly at the end: in the last step
    events[11][1] = [0.65]
    counts = ds.bin_events(events, n_steps=10)
    assert counts.shape == (10, 24)
    assert counts[0, 0] == 2 and counts[9, 0] == 1 and counts[5, 23] == 1
    assert counts.sum() == 4


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        ds.stratified_split(np.zeros(10, int), (0.5, 0.5, 0.5))


# --------------------------------------------------------------------------------- error paths


def _registry(url: str, content: bytes, relpath: str = "braille/fake_file") -> dict:
    digest = hashlib.sha256(content).hexdigest()
    return {relpath: ds.RemoteFile(relpath, url, digest, len(content))}


def test_missing_file_offline_names_file_url_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(ds.OFFLINE_ENV, "1")
    with pytest.raises(ds.DatasetError) as info:
        ds.load_braille_events()
    message = str(info.value)
    assert str(tmp_path / ds.BRAILLE_FILE) in message
    assert ds.REGISTRY[ds.BRAILLE_FILE].url in message
    assert ds.DATA_DIR_ENV in message
    assert not (tmp_path / ds.BRAILLE_FILE).exists()


def test_missing_file_unreachable_url(tmp_path):
    with socket.socket() as probe:  # a local port with nobody listening: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data_braille_letters_th10"
    registry = _registry(url, b"whatever")
    with pytest.raises(ds.DatasetError) as info:
        ds.fetch("braille/fake_file", tmp_path, download=True, registry=registry)
    message = str(info.value)
    assert "could not be downloaded" in message and url in message
    assert str(tmp_path / "braille/fake_file") in message and ds.DATA_DIR_ENV in message


@pytest.fixture()
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/'served' (no network needed)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args, **kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_sha256(local_server, tmp_path):
    served, base = local_server
    content = b"good bytes " * 100
    (served / "good").write_bytes(content)
    registry = _registry(f"{base}/good", content)
    target = tmp_path / "data"
    path = ds.fetch("braille/fake_file", target, download=True, registry=registry)
    assert path == target / "braille/fake_file" and path.read_bytes() == content
    # a second call uses the verified local copy
    assert ds.fetch("braille/fake_file", target, download=False, registry=registry) == path


def test_download_with_wrong_checksum_is_refused(local_server, tmp_path):
    served, base = local_server
    (served / "tampered").write_bytes(b"not what was published")
    registry = _registry(f"{base}/tampered", b"what was published")
    target = tmp_path / "data"
    with pytest.raises(ds.DatasetError, match="sha256") as info:
        ds.fetch("braille/fake_file", target, download=True, registry=registry)
    assert str(target / "braille/fake_file") in str(info.value)
    assert not (target / "braille/fake_file").exists()


@pytest.mark.parametrize("relpath", [ds.BRAILLE_FILE, "jsb/jsb-chorales-quarter.json"])
def test_corrupt_local_copy_is_a_checksum_error(tmp_path, relpath):
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x03]q\x00(}q\x01")  # a truncated pickle / not the published file
    with pytest.raises(ds.DatasetError) as info:
        if relpath.startswith("jsb"):
            ds.load_jsb("quarter", directory=tmp_path, download=False)
        else:
            ds.load_braille_events(tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message and "sha256 mismatch" in message and "delete" in message
    assert path.exists()  # the user's file is not deleted behind their back


def test_truncated_user_file_is_a_clear_error(tmp_path):
    path = tmp_path / "jsb.json"
    path.write_text('{"train": [[[60, 64]], [[6')
    with pytest.raises(ds.DatasetError, match="corrupt or truncated"):
        ds.load_jsb(path=path)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Evil(), "valid": [], "test": []}, protocol=2))
    with pytest.raises(ds.DatasetError, match="refusing to load global"):
        ds.load_jsb(path=path)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path))
    assert ds.data_dir() == tmp_path
    assert ds.data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(ds.DATA_DIR_ENV)
    assert ds.data_dir() == ds.REPO_ROOT / "data"


def test_unknown_file_and_grid():
    with pytest.raises(ds.DatasetError, match="unknown data file"):
        ds.fetch("nope/nothing")
    with pytest.raises(ds.DatasetError, match="unknown JSB grid"):
        ds.load_jsb("32nd")


def test_bin_samples_matches_bin_events():
    rng = np.random.default_rng(3)
    samples = [
        {
            "events": [
                [sorted(rng.uniform(0, 1.3, rng.integers(0, 4))) for _ in range(2)]
                for _ in range(12)
            ]
        }
        for _ in range(5)
    ]
    many = ds.bin_samples(samples, 17)
    for index, sample in enumerate(samples):
        assert np.array_equal(many[index], ds.bin_events(sample["events"], 17))
