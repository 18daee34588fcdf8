"""Shared fixtures: one fake provider per session (reset for every test), Ray, a browser, an OTLP collector.

The helpers they use, and that test modules import, are in ``tests/support/``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from runner.local import PREFIX, install_for
from runner.provider import setup
from tests.doubles.config import QUIET
from tests.doubles.provider import FakeProvider
from tests.support.browser import chromium
from tests.support.files import SECRET
from tests.support.tracing import collecting

if TYPE_CHECKING:
    from tests.support.run import Cluster  # imports litellm: only after setup.configure() below

# Before any test module imports litellm (some import it directly): no price-list fetch at import.
setup.configure()
setup.add_model_hook(PREFIX, install_for)  # as the entry points do


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real key can leak into a test, litellm stays offline, and every test (and every process it
    starts) has a response cache of its own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for name in list(os.environ):
        if name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("AZURE_API_KEY", SECRET)  # azure/ models (Azure OpenAI) find no key of OpenAI's
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", "true")
    monkeypatch.setenv("LITELLM_MODE", "PRODUCTION")


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp


@pytest.fixture
def provider(_server: FakeProvider) -> FakeProvider:
    """The fake OpenAI-compatible provider, with no faults and fresh counters."""
    _server.configure(**QUIET)
    _server.reset()
    return _server


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """A collection after every test, so a leak (an unclosed socket's ResourceWarning) fails the test that
    made it. What survives it is frozen out of later collections: they scan only what the next test made,
    not litellm's whole object graph again (a full collection took ~0.4 s a test, a fifth of the suite)."""
    yield
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real local Ray cluster, one per test process that asks (starting one takes seconds): test_ray's and
    test_matrix's Ray cases share it; each run starts workers of its own in it and names its rows apart."""
    from runner.executors.ray_cluster import cluster
    from tests.doubles.stamped import STAMPS
    from tests.support.run import Cluster

    base = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as env:  # what the workers' processes inherit from the cluster
        env.setenv("OPENAI_API_KEY", SECRET)
        env.setenv(STAMPS, str(base / "stamps"))
        with cluster(base / "cluster", cpus=4) as record:
            yield Cluster(record, base / "stamps")
    pids = (base / "cluster" / "ray.pids").exists()
    assert not pids  # a clean shutdown stopped and forgot every process Ray started


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium, or a skip that says why there is none."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP trace collector on 127.0.0.1: its URL, and the export requests' bodies as they come."""
    with collecting() as endpoint:
        yield endpoint


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a slow test run first, each module's tests still together and in order: under
    ``-n 2 --dist worksteal`` the long tests (Ray clusters, SIGKILL loops) start early and the run ends on
    short ones, instead of one worker finishing a minute-long test while the other has nothing left."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # stable: the order within each group stays
