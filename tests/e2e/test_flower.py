"""The federation through real Flower processes: ``flower-superlink``, one
``flower-supernode`` per site, ``flwr run`` of the NeuroEdge app (ServerApp = our
coordinator, ClientApp = our appliance code), next to real ``python -m device serve``
appliances fed through their own upload + confirm API (``coordinator simulate
--transport flower``). Two sites, two rounds, on the real dataset."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("flwr")

SITES, ROUNDS = 2, 2


@pytest.fixture(scope="module")
def flower_report(data_dir, trained_bundle, tmp_path_factory) -> dict:
    from coordinator.simulate import simulate
    initial = tmp_path_factory.mktemp("initial")
    shutil.copytree(trained_bundle[0], initial / "bundle")
    shutil.copy(trained_bundle[1], initial / "model.weights.h5")
    # Every version that runs is published (margin 1.0): this tests the transport, and a
    # 10-epoch test model's federated head can fail the gate at its fixed threshold. The
    # gate's refusals are tested in tests/coordinator/test_rounds.py.
    return simulate(data_dir, SITES, ROUNDS, "iid", transport="flower", initial=initial,
                    workdir=tmp_path_factory.mktemp("flower"), publish_margin=1.0)


def test_two_rounds_through_flower_aggregate_both_sites_and_devices_serve_the_result(
        flower_report):
    rounds = flower_report["rounds"]
    assert flower_report["transport"] == "flower" and len(rounds) == ROUNDS
    for r in rounds:
        # Each round is one coordinator round that received both sites' int8 deltas
        # (edge head: 6,209 parameters -> a few KB) and ended with an outcome.
        assert r["coordinator_round"] is not None and r["reason"].startswith("outcome:"), r
        assert all(isinstance(b, int) and 1_000 < b < 12_000 for b in r["update_bytes"]), r
        assert r["skipped"] == []
        assert 0.0 <= r["global_accuracy"] <= 1.0
    # Only the delta goes up: bytes per device are the update plus its JSON, no image.
    for r in rounds:
        assert r["bytes_up_per_device"] < max(r["update_bytes"]) + 3_000, r
    versions = [r["model_version"] for r in rounds]
    assert versions == sorted(versions)
    # A published bundle reaches every site, which installs it after its own checks or
    # refuses it (e.g. worse on its held-out cases); an unpublished round changes nothing.
    # The serving appliance adopts what its ClientApp installed.
    last_installed = [1] * SITES
    for r in rounds:
        if not r["published"]:
            assert r["installed"] == ["none"] * SITES, r
            continue
        assert set(r["installed"]) <= {"installed", "refused"}, r
        # the files that changed (the head, the manifest, the signature), once; the
        # bundle's other ~240 KB are copied from the version each site has
        assert 1_000 < r["bytes_down_per_device"] < 50_000, r
        last_installed = [r["model_version"] if action == "installed" else v
                          for action, v in zip(r["installed"], last_installed)]
    assert flower_report["served_versions"] == last_installed
    assert any(r["published"] for r in rounds), [r["reason"] for r in rounds]


def test_the_flower_report_has_the_same_columns_as_the_http_one(flower_report):
    from coordinator.cluster import round_row
    result = {"accuracy": 0.5, "auc": 0.5}
    keys = set(round_row(1, 1, 1, False, "", result, [0], [0], [{}], ["none"], 0.0,
                         ["site-0"]))
    assert set(flower_report["rounds"][0]) == keys
