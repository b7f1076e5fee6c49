"""The coordinator's administrator dashboard in Debian's Chromium (Playwright; see
conftest.py), served by a real ``python -m coordinator serve`` process: rounds,
devices, quality and the audit log, and sign-in."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from coordinator.store.base import AUDIT_FIELDS
from tests.e2e.coordinator_process import (
    ADMIN, ADMIN_PASSWORD, Coordinator, Update, coordinator_cli, enroll, path_of,
    write_config,
)


def table(page, selector: str) -> list[list[str]]:
    """The text of each data row's cells (the header row left out)."""
    return page.locator(f"{selector} tr").evaluate_all(
        "rows => rows.slice(1).map(r => Array.from(r.cells, c => c.innerText.trim()))")


def sign_in(page, base: str, user: str, password: str):
    """Fill and submit the sign-in form (from wherever the browser is); the POST's
    response."""
    if path_of(page.url) != "/login":
        page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    with page.expect_response(lambda r: path_of(r.url) == "/login"
                              and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return posted.value


SKIPPED = "need at least 8 confirmed training examples, have 3"


def check_quality(page, expect) -> None:
    """The quality plots: v1's evaluated point(s), and each clinic's own figure for v1 (as
    the updates of the test reported it), in the plot and in the table, with pi-3's
    reason for sending nothing."""
    expect(page.locator("svg#quality")).to_be_visible()
    assert page.locator("svg#quality circle").count() >= 1
    assert "v1 auc" in " ".join(page.locator("svg#quality circle title").all_text_contents())
    expect(page.locator("svg#clinic-quality")).to_be_visible()
    assert sorted(page.locator("svg#clinic-quality circle title").all_text_contents()) == [
        "pi-1 v1 accuracy 0.875 on 8 cases", "pi-2 v1 accuracy 0.500 on 8 cases"]
    assert table(page, "#clinics") == [["pi-1", "0.88 (8)"], ["pi-2", "0.50 (8)"],
                                       ["pi-3", f"skipped: {SKIPPED}"]]


@pytest.fixture
def dashboard(tmp_path: Path, start_coordinator) -> tuple[Coordinator, dict[str, str]]:
    """A coordinator (min_updates 2) with pi-1, pi-2, pi-3 and the admin made with the
    CLI, pi-3 having said it could not train on v1; the device tokens."""
    state = tmp_path / "state"
    tokens = {d: enroll(state, d) for d in ("pi-1", "pi-2", "pi-3")}
    coordinator_cli("add-admin", ADMIN, state=state, stdin=ADMIN_PASSWORD + "\n")
    config = write_config(tmp_path / "coordinator.toml", min_updates=2)
    server = start_coordinator(state, config)
    said = requests.post(f"{server.url}/api/v1/reports", timeout=30, json={
        "kind": "training_skipped", "version": 1, "reason": SKIPPED},
        headers={"Authorization": f"Bearer {tokens['pi-3']}"})
    assert said.status_code == 201, said.text
    return server, tokens


def test_dashboard_shows_rounds_devices_quality_and_audit(page, dashboard):
    expect = pytest.importorskip("playwright.sync_api").expect
    # Prepare: one round closed by two device updates.
    server, tokens = dashboard
    before = datetime.now(timezone.utc).replace(microsecond=0)
    acks = [server.post_update(tokens[d], Update(server.state, d, seed=n,
                                                 local_accuracy=(0.875, 0.5)[n]))
            for n, d in enumerate(("pi-1", "pi-2"))]
    assert [a.status_code for a in acks] == [202, 202], [a.text for a in acks]
    round_id = acks[1].json()["round"]
    assert acks[1].json()["round_closed"] is True
    assert server.wait_for_outcome(tokens["pi-1"], round_id)["reason"].startswith("outcome:")

    # Execute: the dashboard needs a session; sign in from the login page it sends us to.
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"
    assert sign_in(page, server.url, ADMIN, ADMIN_PASSWORD).status == 302
    assert path_of(page.url) == "/"

    # Assert: the closed round with its update count.
    expect(page.locator("#rounds")).to_be_visible()
    rounds = {r[0]: r for r in table(page, "#rounds")}
    assert rounds[str(round_id)][1] == "closed"
    assert rounds[str(round_id)][3] == "2"
    assert rounds[str(round_id)][5] == "—"  # nothing published without coordinator data

    # Assert: both devices, pi-1 seen during this test, running v1.
    devices = {r[0]: r for r in table(page, "#devices")}
    assert set(devices) == {"pi-1", "pi-2", "pi-3"}
    seen = datetime.fromisoformat(devices["pi-1"][2]).replace(tzinfo=timezone.utc)
    assert before <= seen <= datetime.now(timezone.utc)
    assert devices["pi-1"][3] == "1" and devices["pi-1"][4] == "active"

    # Assert: v1's quality, on the coordinator's images and on each clinic's own cases.
    check_quality(page, expect)

    # Execute: open the audit log from the header.
    page.locator("header").get_by_role("link", name="Audit log").click()
    page.wait_for_url(f"{server.url}/audit")

    # Assert: enrolments and the round's closing are there.
    events = table(page, "#audit")
    enrolled = sorted(e[2] for e in events if e[1] == "device_enrolled")
    closed = [json.loads(e[3]) for e in events if e[1] == "round_closed"]
    assert enrolled == ["pi-1", "pi-2", "pi-3"]
    assert [c["round"] for c in closed] == [round_id]

    # Execute: export the CSV with the browser's session.
    export = page.request.get(f"{server.url}/audit.csv")

    # Assert: a CSV of the same events, with its header line; no session, no CSV.
    assert export.status == 200
    assert export.headers["content-type"].startswith("text/csv")
    text = export.text()
    assert text.splitlines()[0] == ",".join(AUDIT_FIELDS) == "id,at,kind,device_id,detail"
    kinds = [row["kind"] for row in csv.DictReader(io.StringIO(text))]
    assert kinds.count("device_enrolled") == 3 and kinds.count("round_closed") == 1
    assert kinds.count("training_skipped") == 1
    anonymous = requests.get(f"{server.url}/audit.csv", timeout=10, allow_redirects=False)
    assert anonymous.status_code == 302 and path_of(anonymous.headers["Location"]) == "/login"


def test_dashboard_needs_a_session_and_refuses_a_wrong_password(page, dashboard):
    expect = pytest.importorskip("playwright.sync_api").expect
    # Prepare
    server, _ = dashboard

    # Execute: no session.
    page.goto(f"{server.url}/")

    # Assert: sent to the sign-in page, with the way back remembered.
    assert path_of(page.url) == "/login"
    assert parse_qs(urlparse(page.url).query) == {"next": ["/"]}

    # Execute: a wrong password.
    response = sign_in(page, server.url, ADMIN, "not the password")

    # Assert: 401, the error shown, still no session.
    assert response.status == 401
    assert path_of(page.url) == "/login"
    expect(page.locator("p.error")).to_have_text("Wrong name or password.")
    expect(page.get_by_role("button", name=re.compile("^Sign out"))).to_have_count(0)
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"
