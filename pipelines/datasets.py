"""Datasets used by every experiment: JSB Chorales and the event-encoded tactile Braille letters.

Where the files live
--------------------
``data_dir()`` resolves the data directory: an explicit argument, else the environment variable
``BRUNO_DATA_DIR``, else ``<repo>/data``. Inside it the layout is::

    jsb/jsb-chorales-quarter.json   (also -8th, -16th)
    braille/data_braille_letters_th10

Every known file has a pinned upstream URL (raw file at a fixed commit) and a sha256. A file that is
present is checked against its sha256 before it is parsed; a file that is missing is downloaded with
``pooch`` (checksum verified before the file is moved into place). ``BRUNO_OFFLINE=1`` (or
``download=False``) turns downloads off. Every failure is a :class:`DatasetError` that names the
file and says what to do.

JSB Chorales
------------
Boulanger-Lewandowski et al. (2012) split, 229/76/77 chorales. Each chorale becomes a piano roll
``[T, 54]`` (float32, MIDI 43..96), one frame per coarse step. Both the JSON rendering and the
original pickle format (``{"train"|"valid"|"test": [[notes...] per step] per chorale}``, notes as
tuples/lists/arrays) are read.

Braille letters (th10 events)
-----------------------------
5400 samples (27 classes x 200), 12 taxels x (ON, OFF) spike times in seconds over 0..1.3 s. Events
are binned onto ``n_steps`` coarse steps per sample as counts per (step, channel), channel =
``2 * taxel + polarity``. The train/validation/test split is stratified per class and fixed by a
seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DATA_DIR_ENV = "BRUNO_DATA_DIR"
OFFLINE_ENV = "BRUNO_OFFLINE"
REPO_ROOT = Path(__file__).resolve().parents[1]

JSB_COMMIT = "9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d"
JSB_REPO = "czhuang/JSB-Chorales-dataset"
BRAILLE_COMMIT = "30e2adf4872886d05755e964476a8acfa4f855c0"
BRAILLE_REPO = "miskarous/tactile_braille_reading"


class DatasetError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, fails its checksum, or cannot be parsed."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A data file: where it lives under the data directory, where it comes from, its sha256."""

    relpath: str
    url: str
    sha256: str
    size: int | None = None


def _raw_github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


REGISTRY: dict[str, RemoteFile] = {
    entry.relpath: entry
    for entry in (
        *(
            RemoteFile(
                f"jsb/jsb-chorales-{grid}.json",
                _raw_github(JSB_REPO, JSB_COMMIT, f"jsb-chorales-{grid}.json"),
                sha256,
            )
            for grid, sha256 in (
                ("quarter", "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91"),
                ("8th", "88fb80b22829a815e8105da538d94ae803773158507e2145938351f35142390a"),
                ("16th", "8730aca7b64e7d29493733d1cf19fad4a5b351d8f1845e57dac27728104fd39f"),
            )
        ),
        RemoteFile(
            "braille/data_braille_letters_th10",
            _raw_github(BRAILLE_REPO, BRAILLE_COMMIT, "notebooks/data/data_braille_letters_th10"),
            "9c74da8eb0dff3055363853d3c41d336847a6f5d833067924484363774938473",
            3543228,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Locating, downloading and verifying files


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$BRUNO_DATA_DIR``, else ``<repo>/data``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data"


def downloads_enabled() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, entry: RemoteFile) -> None:
    actual = sha256_of(path)
    if actual != entry.sha256:
        size = path.stat().st_size
        expected_size = f" (expected {entry.size} bytes)" if entry.size else ""
        raise DatasetError(
            f"{path}: sha256 mismatch - the file is corrupt or truncated.\n"
            f"  expected sha256 {entry.sha256}\n"
            f"  actual   sha256 {actual} ({size} bytes{expected_size})\n"
            f"  What to do: delete {path} and run again to download it from {entry.url}, "
            f"or copy a good copy into {DATA_DIR_ENV} ({path.parent.parent})."
        )


def fetch(
    relpath: str,
    directory: str | os.PathLike | None = None,
    download: bool | None = None,
    registry: dict[str, RemoteFile] | None = None,
) -> Path:
    """Return the verified local path of a registered data file, downloading it if missing.

    ``download=None`` follows ``$BRUNO_OFFLINE`` (downloads on unless it is set).
    """
    registry = REGISTRY if registry is None else registry
    if relpath not in registry:
        raise DatasetError(f"unknown data file '{relpath}'; known: {sorted(registry)}")
    entry = registry[relpath]
    root = data_dir(directory)
    path = root / relpath
    if path.is_file():
        _verify(path, entry)
        return path
    download = downloads_enabled() if download is None else download
    where = (
        f"data directory {root} (set by {DATA_DIR_ENV})"
        if directory is None and os.environ.get(DATA_DIR_ENV)
        else f"data directory {root} (set {DATA_DIR_ENV} to change it)"
    )
    if not download:
        raise DatasetError(
            f"{path}: dataset file is missing and downloads are off ({OFFLINE_ENV} set).\n"
            f"  Looked in the {where}.\n"
            f"  What to do: point {DATA_DIR_ENV} at a directory that holds {relpath}, or download "
            f"{entry.url} (sha256 {entry.sha256}) to {path}, or unset {OFFLINE_ENV}."
        )
    import pooch  # imported lazily: only needed when a file must be fetched

    try:
        pooch.retrieve(
            url=entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=path.name,
            path=path.parent,
            progressbar=_progressbar(),
        )
    except ValueError as error:  # pooch's checksum mismatch (the bad download is discarded)
        raise DatasetError(
            f"{path}: the download from {entry.url} failed its sha256 check ({error}).\n"
            f"  Nothing was written. What to do: retry later, or place a good copy "
            f"(sha256 {entry.sha256}) at {path}."
        ) from error
    except Exception as error:  # network errors: no route, DNS, HTTP status, ...
        raise DatasetError(
            f"{path}: dataset file is missing and could not be downloaded from {entry.url} "
            f"({type(error).__name__}: {error}).\n"
            f"  Looked in the {where}.\n"
            f"  What to do: check the network, or point {DATA_DIR_ENV} at a directory that holds "
            f"{relpath}, or download the URL by hand to {path} (sha256 {entry.sha256})."
        ) from error
    if not path.is_file():  # pragma: no cover - pooch guarantees this
        raise DatasetError(f"{path}: download reported success but the file is not there")
    _verify(path, entry)
    return path


def _progressbar() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Safe pickle reading: the data files hold only plain containers (and, for some JSB pickles, numpy
# arrays), so everything else is refused instead of executed.

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store numpy's raw bytes
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")


def _load_pickle(path: Path):
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:
        raise DatasetError(
            f"{path}: cannot read it as a pickle ({type(error).__name__}: {error}); the file is "
            f"corrupt or truncated. Delete it and run again to download a fresh copy."
        ) from error


# --------------------------------------------------------------------------------------------------
# JSB Chorales

JSB_NOTE_MIN = 43
JSB_NOTE_MAX = 96
JSB_NOTES = JSB_NOTE_MAX - JSB_NOTE_MIN + 1  # 54
JSB_SPLITS = ("train", "valid", "test")
JSB_SPLIT_SIZES = {"train": 229, "valid": 76, "test": 77}
JSB_GRIDS = ("quarter", "8th", "16th")
# Lowest MIDI note of the 54-note window per grid. The quarter grid (the benchmark) spans 43..96;
# the czhuang 8th/16th renderings are transposed and span 36..81, so their window starts at 36.
JSB_GRID_NOTE_MIN = {"quarter": 43, "8th": 36, "16th": 36}


def piano_roll(
    chorale: Sequence[Sequence[int]], source: str = "chorale", note_min: int = JSB_NOTE_MIN
) -> torch.Tensor:
    """A chorale (per step, the sounding MIDI notes) as a float32 piano roll ``[T, 54]`` over MIDI
    ``note_min .. note_min + 53``."""
    note_max = note_min + JSB_NOTES - 1
    steps = [step for step, notes in enumerate(chorale) for _ in range(np.size(notes))]
    values = [np.asarray(notes, dtype=np.float64).reshape(-1) for notes in chorale]
    values = np.concatenate(values) if values else np.zeros(0)
    bad = (values != np.round(values)) | (values < note_min) | (values > note_max)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: step {steps[first]} holds note {values[first]:g}, outside MIDI "
            f"{note_min}..{note_max} (not a JSB Chorales file, or another note window?)"
        )
    roll = torch.zeros(len(chorale), JSB_NOTES, dtype=torch.float32)
    roll[
        torch.tensor(steps, dtype=torch.long), torch.from_numpy(values.astype(np.int64) - note_min)
    ] = 1.0
    return roll


def _parse_jsb(raw, path: Path, note_min: int) -> dict[str, list[torch.Tensor]]:
    if not isinstance(raw, dict) or any(split not in raw for split in JSB_SPLITS):
        raise DatasetError(
            f"{path}: expected a mapping with keys {JSB_SPLITS}, got "
            f"{type(raw).__name__} with keys {sorted(raw) if isinstance(raw, dict) else '-'}"
        )
    out = {}
    for split in JSB_SPLITS:
        chorales = raw[split]
        out[split] = [
            piano_roll(chorale, f"{path} [{split}][{index}]", note_min)
            for index, chorale in enumerate(chorales)
        ]
    return out


def load_jsb(
    grid: str = "quarter",
    directory: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    download: bool | None = None,
    check_split_sizes: bool = True,
    note_min: int | None = None,
) -> dict[str, list[torch.Tensor]]:
    """JSB Chorales as ``{"train"|"valid"|"test": [piano roll [T, 54] per chorale]}``.

    The 54-note window starts at ``note_min`` (default: 43 for the quarter grid and user files,
    36 for the transposed 8th/16th renderings, see :data:`JSB_GRID_NOTE_MIN`).

    ``path`` reads any file in the JSON or the original pickle format (no checksum: it is yours);
    otherwise the registered ``jsb/jsb-chorales-<grid>.json`` is fetched and verified.
    """
    if path is None:
        if grid not in JSB_GRIDS:
            raise DatasetError(f"unknown JSB grid '{grid}'; choose one of {JSB_GRIDS}")
        file = fetch(f"jsb/jsb-chorales-{grid}.json", directory, download)
    else:
        file = Path(path)
        if not file.is_file():
            raise DatasetError(f"{file}: no such JSB Chorales file")
    with open(file, "rb") as handle:
        head = handle.read(1)
    if head == b"\x80":  # a pickle (protocol >= 2)
        raw = _load_pickle(file)
    else:
        try:
            raw = json.loads(file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raw = None
            try:  # protocol 0/1 pickles start with other bytes
                raw = _RestrictedUnpickler(io.BytesIO(file.read_bytes()), encoding="latin1").load()
            except Exception:
                raise DatasetError(
                    f"{file}: neither valid JSON nor a pickle ({error}); the file is corrupt or "
                    f"truncated. Delete it and run again to download a fresh copy."
                ) from error
    if note_min is None:
        note_min = JSB_GRID_NOTE_MIN.get(grid, JSB_NOTE_MIN) if path is None else JSB_NOTE_MIN
    data = _parse_jsb(raw, file, note_min)
    if check_split_sizes and path is None:
        sizes = {split: len(data[split]) for split in JSB_SPLITS}
        if sizes != JSB_SPLIT_SIZES:
            raise DatasetError(f"{file}: split sizes {sizes}, expected {JSB_SPLIT_SIZES}")
    return data


def jsb_batch(rolls: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-frame prediction batch: inputs ``[T-1, B, 54]`` (frames 0..T-2), targets
    ``[T-1, B, 54]`` (frames 1..T-1), mask ``[T-1, B]`` (1 where the target frame exists).
    Time-major; shorter chorales are zero-padded at the end."""
    lengths = [int(roll.shape[0]) - 1 for roll in rolls]
    if min(lengths) < 1:
        raise ValueError("every chorale needs at least 2 frames")
    steps = max(lengths)
    inputs = torch.zeros(steps, len(rolls), JSB_NOTES)
    targets = torch.zeros(steps, len(rolls), JSB_NOTES)
    mask = torch.zeros(steps, len(rolls))
    for column, (roll, length) in enumerate(zip(rolls, lengths, strict=True)):
        inputs[:length, column] = roll[:-1]
        targets[:length, column] = roll[1:]
        mask[:length, column] = 1.0
    return inputs, targets, mask


# --------------------------------------------------------------------------------------------------
# Braille letters (th10 events)

BRAILLE_FILE = "braille/data_braille_letters_th10"
BRAILLE_CLASSES = ("Space",) + tuple(chr(ord("A") + i) for i in range(26))
BRAILLE_TAXELS = 12
BRAILLE_CHANNELS = 2 * BRAILLE_TAXELS  # 24: taxel-major, (ON, OFF) per taxel
BRAILLE_DURATION = 1.3  # s
BRAILLE_SAMPLES = 5400


@dataclasses.dataclass
class BrailleData:
    """Binned events and a fixed split.

    ``inputs``: float32 ``[N, n_steps, 24]`` event counts; ``labels``: int64 ``[N]`` in 0..26 (index
    into :data:`BRAILLE_CLASSES`); ``splits``: ``{"train"|"valid"|"test": int64 indices}``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    splits: dict[str, torch.Tensor]
    n_steps: int
    step_duration: float
    split_seed: int

    def subset(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.splits[split]
        return self.inputs[index], self.labels[index]


def load_braille_events(
    directory: str | os.PathLike | None = None, download: bool | None = None
) -> list[dict]:
    """The raw th10 samples: a list of ``{'letter': str, 'events': [12][2] -> [times in s]}``."""
    path = fetch(BRAILLE_FILE, directory, download)
    samples = _load_pickle(path)
    if not isinstance(samples, list) or not samples or not isinstance(samples[0], dict):
        raise DatasetError(f"{path}: expected a list of dicts, got {type(samples).__name__}")
    for index, sample in enumerate(samples):
        events = sample.get("events")
        if sample.get("letter") not in BRAILLE_CLASSES or not (
            isinstance(events, list)
            and len(events) == BRAILLE_TAXELS
            and all(len(taxel) == 2 for taxel in events)
        ):
            raise DatasetError(f"{path}: sample {index} is not a th10 Braille sample")
    return samples


def bin_events(events, n_steps: int, duration: float = BRAILLE_DURATION) -> np.ndarray:
    """Event counts ``[n_steps, 24]`` for one sample; step k covers ``[k, k+1) * duration/n_steps``
    and an event at exactly ``duration`` falls in the last step."""
    counts = np.zeros((n_steps, BRAILLE_CHANNELS), dtype=np.float32)
    for taxel, polarities in enumerate(events):
        for polarity, times in enumerate(polarities):
            if len(times) == 0:
                continue
            steps = np.floor(np.asarray(times, dtype=np.float64) / duration * n_steps).astype(int)
            steps = np.clip(steps, 0, n_steps - 1)
            np.add.at(counts[:, 2 * taxel + polarity], steps, 1.0)
    return counts


def bin_samples(samples: Sequence[dict], n_steps: int, duration: float = BRAILLE_DURATION):
    """:func:`bin_events` for many samples at once: ``[N, n_steps, 24]`` float32."""
    sample_index, channel, times = [], [], []
    for index, sample in enumerate(samples):
        for taxel, polarities in enumerate(sample["events"]):
            for polarity, spikes in enumerate(polarities):
                sample_index.extend([index] * len(spikes))
                channel.extend([2 * taxel + polarity] * len(spikes))
                times.extend(spikes)
    steps = np.floor(np.asarray(times, dtype=np.float64) / duration * n_steps).astype(np.int64)
    steps = np.clip(steps, 0, n_steps - 1)
    counts = np.zeros((len(samples), n_steps, BRAILLE_CHANNELS), dtype=np.float32)
    np.add.at(counts, (np.asarray(sample_index, np.int64), steps, np.asarray(channel, np.int64)), 1)
    return counts


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, np.ndarray]:
    """Per class, a seeded permutation cut into train/valid/test by ``fractions``.
    Returns sorted indices per split."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or abs(fractions.sum() - 1) > 1e-9:
        raise ValueError(
            f"split fractions must be 3 non-negative numbers summing to 1: {fractions}"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_train = int(round(fractions[0] * len(members)))
        n_valid = int(round(fractions[1] * len(members)))
        parts["train"].append(members[:n_train])
        parts["valid"].append(members[n_train : n_train + n_valid])
        parts["test"].append(members[n_train + n_valid :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def load_braille(
    n_steps: int = 100,
    split_seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    directory: str | os.PathLike | None = None,
    download: bool | None = None,
    duration: float = BRAILLE_DURATION,
) -> BrailleData:
    """Braille letters binned onto ``n_steps`` coarse steps with a fixed stratified split."""
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    samples = load_braille_events(directory, download)
    labels = np.array([BRAILLE_CLASSES.index(sample["letter"]) for sample in samples])
    inputs = bin_samples(samples, n_steps, duration)
    splits = stratified_split(labels, fractions, split_seed)
    return BrailleData(
        inputs=torch.from_numpy(inputs),
        labels=torch.from_numpy(labels).long(),
        splits={name: torch.from_numpy(index).long() for name, index in splits.items()},
        n_steps=n_steps,
        step_duration=duration / n_steps,
        split_seed=split_seed,
    )
