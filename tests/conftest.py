"""Shared fixtures: a local Ray instance (bruno.execution tests) and the real-data checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() == "true"


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance (2 CPUs) for the whole session. Ray is the optional ``cluster``
    extra: without it the Ray tests skip here, and fail in CI, which installs it (.ci/run)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        message = "Ray is not installed (pip install -e '.[cluster]')"
        if IN_CI:
            pytest.fail(message + " - CI installs the cluster extra, so this is a failure")
        pytest.skip(message)
    from bruno import execution

    os.environ.pop("RAY_ADDRESS", None)  # a local instance, whatever the caller's shell says
    ray = execution.ray_init(2)
    yield ray
    ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def backend(request) -> str:
    """Each execution backend in turn (the Ray one on the session's local instance)."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


def need_data(relpath: str) -> Path:
    """A real data file under $BRUNO_DATA_DIR: a skip here when missing, a failure in CI."""
    from pipelines import datasets as ds

    path = ds.data_dir() / relpath
    if not path.is_file():
        message = f"real data missing: {path} (set {ds.DATA_DIR_ENV})"
        if IN_CI:
            pytest.fail(message + " - in CI a missing dataset is a failure")
        pytest.skip(message)
    return path


@pytest.fixture
def braille_data() -> Path:
    """The Braille event data (tests that build the Braille task)."""
    from pipelines import datasets as ds

    return need_data(ds.BRAILLE_FILE)
