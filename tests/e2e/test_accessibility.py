"""Accessibility: axe-core (bundled by ``axe-playwright-python``) on every page of the
appliance in Debian's Chromium, at desktop and phone widths: no serious or critical
violation."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.e2e.conftest import PASSWORD, add_user
from tests.e2e.test_browser import sign_in
from tests.e2e.test_study_viewer import study_zip

SERIOUS = ("serious", "critical")


def violations(page) -> list[str]:
    found = Axe().run(page).response["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']} at "
            f"{[n['target'] for n in v['nodes']][:3]}" for v in found if v["impact"] in SERIOUS]


@pytest.mark.parametrize("width", [1280, 375])
def test_every_page_has_no_serious_accessibility_violation(
        page, start_appliance, appliance_data, slice_path: Path, tmp_path: Path, width: int):
    # Prepare: an administrator, one analysed slice, one study (a zipped series).
    add_user(appliance_data, "alice")
    server = start_appliance()
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{server.url}/login")
    found = {"/login": violations(page)}
    sign_in(page, server.url, "alice", PASSWORD)
    page.set_input_files("#images", str(slice_path))
    page.click("#analyse")
    page.wait_for_url(re.compile(r"/cases/[0-9a-f]{32}$"), wait_until="load")
    case = page.url
    page.goto(f"{server.url}/")
    page.set_input_files("#images", str(study_zip(slice_path, tmp_path)))
    page.click("#analyse")
    page.wait_for_url(re.compile(r"/upload/results/"), wait_until="load")
    found[page.url.removeprefix(server.url)] = violations(page)
    page.click(".series-summary h2 a")
    page.wait_for_url(re.compile(r"/studies/[0-9a-f]{32}$"), wait_until="load")
    study = page.url

    # Execute: axe on each page.
    for url in (case, study, f"{server.url}/", f"{server.url}/cases/",
                f"{server.url}/studies/", f"{server.url}/admin/", f"{server.url}/model/"):
        page.goto(url)
        found[url.removeprefix(server.url)] = violations(page)

    # Assert
    assert {url: v for url, v in found.items() if v} == {}
