"""``python -m coordinator simulate --partition sites`` on a small subset of the real
manifest: two TCGA-LGG clinics as real appliances, cases arriving before each round,
the MS site held out, baselines on the same test parts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.training.dataset import MANIFEST_NAME
from models.training.splits import clinic_split
from tests.e2e.test_federation import copy_initial

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CLINICS = ("site_tcga_lgg_du", "site_tcga_lgg_ht")
PATIENTS = {"site_tcga_lgg_du": 4, "site_tcga_lgg_ht": 4, "site_ljubljana_ms": 1}


@pytest.fixture(scope="module")
def clinics_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four patients of each clinic, one of the MS site, 6 + 6 Kaggle slices (the
    vendor's: the coordinator's own images)."""
    if not (SHARED / MANIFEST_NAME).is_file():
        pytest.skip(f"shared manifest not found at {SHARED}")
    root = tmp_path_factory.mktemp("clinics")
    lines = (SHARED / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    chosen, taken = [lines[0]], {}
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        site = row["site"]
        if site == "kaggle_navoneel":
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            if taken[row["label"]] > 6:
                continue
        elif site not in PATIENTS:
            continue
        else:
            who = taken.setdefault(site, set())
            if row["subject"] not in who and len(who) == PATIENTS[site]:
                continue
            who.add(row["subject"])
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / row["path"], root / row["path"])
        chosen.append(line)
    (root / MANIFEST_NAME).write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return root


def test_a_clinic_split_keeps_each_patient_on_one_side():
    groups = np.repeat(np.arange(9), 3)
    sites = np.array(["a"] * 15 + ["b"] * 12)

    parts = clinic_split(groups, sites, ["a", "b"], seed=0)

    for clinic, (cases, test) in parts.items():
        assert not set(groups[cases]) & set(groups[test])
        assert len(np.unique(groups[test])) >= 2
        assert set(cases) | set(test) == set(np.flatnonzero(sites == clinic))
    with pytest.raises(ValueError, match="no site 'c'"):
        clinic_split(groups, sites, ["c"], seed=0)


def test_the_simulation_retrains_between_arrivals_as_often_as_an_appliance_does():
    """The simulation asks each appliance to train at each round; by default it does so
    as often per batch of cases as an appliance's own schedule would."""
    from coordinator.__main__ import parser
    from device.config import Settings

    args = parser().parse_args(["simulate", "--partition", "sites", "--data", "d"])

    assert args.rounds_per_arrival == Settings.train_rounds_per_cases > 1


@pytest.mark.slow
@pytest.mark.parametrize("transport, adapter_rank", [("http", 0), ("http", 2), ("flower", 0)])
def test_two_clinics_two_rounds_report_per_clinic_baselines_and_the_held_out_site(
        clinics_manifest: Path, trained_bundle, tmp_path: Path, capsys, transport,
        adapter_rank):
    from coordinator.__main__ import main
    initial = copy_initial(trained_bundle, tmp_path / "initial")
    out = tmp_path / "report.json"
    personalised = transport == "http" and not adapter_rank
    per_arrival = 2 if adapter_rank else 1  # the adapter's run: one arrival, trained twice

    code = main(["simulate", "--partition", "sites", "--data", str(clinics_manifest),
                 "--clinics", ",".join(CLINICS), "--initial", str(initial),
                 "--rounds", "2", "--cases-per-round", "10", "--adapter-rank",
                 str(adapter_rank), "--publish-margin", "1", "--json", str(out),
                 "--transport", transport, "--rounds-per-arrival", str(per_arrival),
                 # the head's clinics may serve their own head (the adapter's do not; nor,
                 # through Flower, does any)
                 *(["--device-setting", "personalise=true"] if personalised else [])])

    assert code == 0
    report = json.loads(out.read_text())
    assert report["clinics"] == list(CLINICS) and len(report["rounds"]) == 2
    assert report["adapter_rank"] == adapter_rank and report["transport"] == transport
    assert report["rounds_per_arrival"] == per_arrival
    first, second = (r["examples"] for r in report["rounds"])
    if per_arrival == 2:  # no new cases: each clinic trains on the same ones again
        assert first == second and any(first), report["rounds"]
    else:
        assert any((b or 0) > (a or 0) for a, b in zip(first, second)), report["rounds"]
    for part in ("initial", "local_only", "centralized", "federated"):
        assert set(report[part]["per_clinic"]) | set(report[part].get("skipped", {})) == \
            set(CLINICS), part
    assert report["per_clinic"] == report["federated"]["per_clinic"]
    assert report["holdout_site"]["n"] > 0 and report["holdout_site"]["sensitivity"] != \
        report["holdout_site"]["sensitivity"]  # NaN: a tumour-free site has no sensitivity
    published = [r for r in report["rounds"] if r["published"]]
    assert published, report["rounds"]
    # A round that changed only the head (and the adapter: a few KB) costs a device
    # those, not the whole bundle, over either transport.
    head_bytes = (initial / "bundle" / "head.npz").stat().st_size
    whole = sum(p.stat().st_size for p in (initial / "bundle").iterdir())
    down = [r["bytes_down_per_device"] for r in published]
    assert all(d < head_bytes + (whole - head_bytes) / 2 for d in down), down
    if personalised:  # each clinic's decision, and the head it serves, judged
        personal = report["personalised"]
        assert set(personal["decisions"]) == set(personal["per_clinic"]) == set(CLINICS)
        for clinic, decision in personal["decisions"].items():  # the global head: as federated
            assert decision["served"] in ("personal", "global")
            assert (personal["per_clinic"][clinic] == report["federated"]["per_clinic"][clinic]
                    ) == (decision["served"] == "global"), decision
    table = capsys.readouterr().out
    assert "federated" in table and CLINICS[0] in table
