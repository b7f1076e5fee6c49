"""The simulation's cluster: a start that fails half way stops the servers it started
and says why."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator import cluster


def _processes_under(root: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(cmdline)
    return found


def test_a_site_that_cannot_be_set_up_stops_the_running_coordinator(
        trained_bundle, small_data, tmp_path, monkeypatch):
    # Prepare: an admin password the appliance's rules refuse (it holds the user name)
    initial = tmp_path / "initial"
    shutil.copytree(trained_bundle[0], initial / "bundle")
    shutil.copy(trained_bundle[1], initial / "model.weights.h5")
    monkeypatch.setattr(cluster, "ADMIN_PASSWORD", "the admin password of a site")
    root = tmp_path / "run"
    root.mkdir()
    # Execute
    with pytest.raises(RuntimeError, match="device adduser failed.*user name"):
        cluster.Cluster(root, 1, small_data, "fedavg", initial)
    # Assert: the coordinator server it had started is gone
    assert _processes_under(root) == []
