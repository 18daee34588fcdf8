"""The multi-machine recipe (docs/scaling-out.md) across two hosts: two network namespaces (tests/support/netns.py).

    namespace a, 10.213.0.1: `ray start --head`, the fake provider, `runner run ... --ray-address 10.213.0.1:6379`
    namespace b, 10.213.0.2: `ray start --address 10.213.0.1:6379`, a worker node

The nodes are started as on fresh machines: the provider's key and Ray's token in the environment of
`ray start`, none of runner's settings. The fake provider counts requests per client address, so a
row sent from the worker node is seen arriving from 10.213.0.2; the node can't see the tests' files
(inputs, run directories, caches). What the two hosts still share (the rest of the file system, the
kernel and its clock, the host name) and so what this does not prove: docs/scaling-out.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.doubles.config import QUIET
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, SECRET, read_jsonl, write_jsonl
from tests.support.netns import Host, Unavailable, two_hosts
from tests.support.run import MODEL, tickets

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a cluster of two nodes, workers importing litellm

JOBS = str(ROOT / "jobs")
PORT = 6379  # the head's GCS port: free, in a namespace of its own
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class TwoMachines:
    """A Ray head (with the fake provider) on host ``a``, a worker node on host ``b``."""

    a: Host
    b: Host
    provider: FakeProvider
    token: str  # the cluster's own: ~/.ray/auth_token is shared with every other Ray test here
    temp: Path  # the nodes' Ray temporary directories (socket paths must stay short)
    hidden: Path  # every test's files (inputs, run directories, response caches): not on host b

    @property
    def head(self) -> str:
        """The head's address, as ``--ray-address`` takes it."""
        return f"{self.a.address}:{PORT}"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with Ray's token, as the docs' recipe sets it."""
        return {**base, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start_node(self, host: Host, *flags: str, hide: Path | None = None) -> None:
        """``ray start`` on ``host``, from a fresh machine's shell: the key, none of runner's settings.
        ``hide``: a directory its processes see empty and read-only (a mount namespace of their own)."""
        shell = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_") and not k.endswith("_API_KEY")}
        temp = tempfile.mkdtemp(prefix=f"{host.netns}-", dir=self.temp)
        argv = [RAY, "start", f"--node-ip-address={host.address}", f"--temp-dir={temp}", "--disable-usage-stats",
                *flags]  # fmt: skip
        if hide is not None:
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(hide), *argv]  # fmt: skip
        env = self.env({**shell, "OPENAI_API_KEY": SECRET})
        started = subprocess.run(host.argv(argv), env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-3000:]

    def join_b(self) -> None:
        """The worker node on host ``b`` (started again if a test killed it), which can't see the tests'
        files: as on another machine, only the job file (and runner itself) is there."""
        if not self.b.pids():
            self.start_node(self.b, f"--address={self.head}", "--num-cpus=1", hide=self.hidden)

    def runner(self) -> list[str]:
        """The coordinator's command, on host ``a``: the recipe's last line (no ``--workers``: one per
        CPU of the cluster, so one on the head and one on the node, every CPU busy)."""
        return self.a.argv([sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", JOBS, "--input",
                            "in.jsonl", "--model", MODEL, "--api-base", self.provider.url, "--ray-address",
                            self.head, "--concurrency", "8"])  # fmt: skip


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMachines]:
    """Two hosts, a head on ``a`` and a node on ``b``, one CPU each (a worker each); every process of them
    killed and both namespaces deleted at the end, whatever happened."""
    with contextlib.ExitStack() as stack:
        temp = Path(tempfile.mkdtemp(prefix="rn-"))
        stack.callback(shutil.rmtree, temp, ignore_errors=True)  # last: after every process is gone
        try:
            a, b = stack.enter_context(two_hosts())
        except Unavailable as exc:
            pytest.skip(f"two network namespaces can't be made here: {exc}")
        provider = stack.enter_context(FakeProvider(host=a.address, enter=a.enter))
        made = TwoMachines(a, b, provider, os.urandom(32).hex(), temp, tmp_path_factory.getbasetemp())
        made.start_node(a, "--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false")
        yield made


@pytest.fixture
def two(machines: TwoMachines) -> TwoMachines:
    """The two machines with both nodes up and the provider's counters fresh."""
    machines.join_b()
    machines.provider.configure(**QUIET)
    machines.provider.reset()
    return machines


def run_dir(tmp_path: Path) -> Path:
    """Where ``runner run classify --input in.jsonl`` writes, run in ``tmp_path``."""
    return tmp_path / "runs" / "classify" / "in"


def test_rows_go_out_from_both_hosts_and_each_is_sent_and_written_once(tmp_path: Path, two: TwoMachines) -> None:
    rows = tickets(60, prefix="n")
    write_jsonl(tmp_path / "in.jsonl", rows)
    done = subprocess.run(two.runner(), cwd=tmp_path, env=two.env(dict(os.environ)), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_jsonl(run_dir(tmp_path) / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(r["id"] for r in rows)  # each row once
    seen_from_b = Path(f"/proc/{two.b.pids()[0]}/root")  # the file system as host b's processes see it
    assert (seen_from_b / JOBS.lstrip("/") / "classify.py").is_file()
    assert not (seen_from_b / str(run_dir(tmp_path)).lstrip("/")).exists()  # nor the input, nor the cache
    stats = two.provider.stats()
    assert stats.total == len(rows) and set(stats.by_key.values()) == {1}  # each sent once
    # The worker on the node sent its share from its own address.
    assert set(stats.by_peer) == {two.a.address, two.b.address} and sum(stats.by_peer.values()) == len(rows)


def test_a_worker_node_killed_mid_run_leaves_every_row_written_once(tmp_path: Path, two: TwoMachines) -> None:
    two.provider.configure(latency_ms=100)  # the node has rows in flight when it dies
    rows = tickets(200, prefix="m")
    write_jsonl(tmp_path / "in.jsonl", rows)
    proc = subprocess.Popen(two.runner(), cwd=tmp_path, env=two.env(dict(os.environ)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        two.provider.wait_for(lambda s: s.by_peer.get(two.b.address, 0) >= 20, timeout=240)
        killed = two.b.kill_all()  # its raylet, its agents, its workers: the machine is gone
        from_b = two.provider.stats().by_peer[two.b.address]
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
    assert killed and proc.returncode == 0, stderr[-3000:]
    results = read_jsonl(run_dir(tmp_path) / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(r["id"] for r in rows)  # each row written once
    stats = two.provider.stats()
    assert stats.by_peer[two.b.address] == from_b  # nothing came from the dead node afterwards
    # The rows the dead node's worker held with no record went out again from host a, once each. Its
    # replacement found no CPU free (or was placed on the dying node and died too): the head's worker finished.
    [lost] = [int(n) for n in re.findall(r"worker w\d+ \(\S+\) died with (\d+) rows in flight", stderr)]
    again = [key for key, n in stats.by_key.items() if n > 1]
    assert set(stats.by_key.values()) <= {1, 2} and stats.total == len(rows) + len(again)
    assert len(again) <= lost
    manifest = orjson.loads((run_dir(tmp_path) / "manifest.json").read_bytes())
    assert manifest["workers"]["replaced"] >= 1 and manifest["request_counts"]["completed"] == len(rows)
