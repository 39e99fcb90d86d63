"""Shared fixtures: a local Ray instance for the execution-layer tests (bruno.execution)."""

from __future__ import annotations

import os

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
