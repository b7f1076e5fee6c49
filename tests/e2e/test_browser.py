"""The appliance in a real browser: first-run setup, sign in, upload a real MRI slice,
read the result, confirm it, find it in the case list, open the admin page, sign out; a
wrong password.

Each test runs ``python -m device serve`` as a subprocess and drives Debian's Chromium
through Playwright (see conftest.py). With ``NEUROEDGE_SCREENSHOTS=FOLDER`` the tests
also save the pages shown in docs/clinician.md into FOLDER (``make screenshots``);
without it they write nothing outside their temporary folders."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.e2e.conftest import PASSWORD, add_user

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CASE_URL = re.compile(r"/cases/([0-9a-f]{32})$")
SCREENSHOT_WIDTH = 900  # px: wide enough for the case page's two images side by side


def path_of(url: str) -> str:
    return urlparse(url).path


def screenshot(page, name: str) -> None:
    """Save the page as ``NAME.png`` in ``$NEUROEDGE_SCREENSHOTS``, if that is set.

    The page is laid out at SCREENSHOT_WIDTH and captured to its own height (no empty
    viewport below the footer); the test's viewport is restored afterwards.
    """
    folder = os.environ.get("NEUROEDGE_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    page.set_viewport_size({"width": SCREENSHOT_WIDTH, "height": 200})
    page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True,
                    animations="disabled", caret="hide")
    if viewport:
        page.set_viewport_size(viewport)


def sign_in(page, base: str, user: str, password: str):
    """Fill and submit the sign-in form; returns the POST's response."""
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    with page.expect_response(lambda r: path_of(r.url) == "/login"
                              and r.request.method == "POST") as posted:
        page.click("button[type=submit]")
    page.wait_for_load_state()
    return posted.value


def test_first_run_creates_the_admin_with_the_logged_setup_code(page, start_appliance):
    # Prepare: no account exists, so the server logs a one-time setup code.
    server = start_appliance()
    code = server.setup_code()

    # Execute: any page sends the browser to /setup; a wrong code, then the logged one.
    page.goto(f"{server.url}/cases/")
    assert path_of(page.url) == "/setup"
    screenshot(page, "setup")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.fill("input[name=setup_code]", code + "x")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("Wrong setup code")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.fill("input[name=setup_code]", code)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")

    # Assert: signed in as the new admin on the upload page; setup is closed for good.
    expect(page.locator("h1")).to_have_text("Analyse MRI slices")
    expect(page.locator("#images")).to_be_attached()
    expect(page.locator("#logout")).to_contain_text("root")
    screenshot(page, "upload")
    page.goto(f"{server.url}/setup")
    assert path_of(page.url) == "/login"


def assert_a_result_is_shown(page) -> str:
    """Probability, label, a decoded heat map and the decision-support notice; the label."""
    expect(page.locator("#probability")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    label = page.locator("#label").inner_text().strip()
    assert label in ("Tumour suspected", "No tumour detected")
    heatmap = page.locator("#heatmap")
    assert heatmap.evaluate("img => img.complete") is True
    assert heatmap.evaluate("img => img.naturalWidth") > 0
    expect(page.locator("main")).to_contain_text("not a diagnosis")
    expect(page.locator("#status")).to_contain_text("Not labelled yet.")
    scale = page.locator("#colour-scale .colour-bar")   # the heat map's colour scale
    assert "linear-gradient" in scale.evaluate("e => getComputedStyle(e).backgroundImage")
    expect(page.locator("#colour-scale")).to_have_attribute(
        "aria-label", re.compile(r"red \(the probability fell \d+ points or more\)"))
    return label


def assert_chosen_label_is_seen(page, chosen: str) -> None:
    """Seen, not only announced: a tick and an outline on the chosen label only."""
    expect(page.locator(chosen)).to_have_attribute("aria-pressed", "true")
    other = "#confirm-none" if chosen == "#confirm-tumour" else "#confirm-tumour"
    marks = "b => [getComputedStyle(b, '::before').content, getComputedStyle(b).outlineStyle]"
    assert page.locator(chosen).evaluate(marks) == ['"\u2713\u00a0"', "solid"]
    assert page.locator(other).evaluate(marks) == ["none", "none"]


def assert_fits_a_phone(page, url: str) -> None:
    """At 375 px neither the upload form nor the case list is wider than the screen; the
    case list is a column of cards that does not even scroll inside its box."""
    page.set_viewport_size({"width": 375, "height": 667})
    for path in ("/cases/", "/"):
        page.goto(f"{url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path
        if path == "/cases/":
            box = "document.querySelector('.scroll')"
            assert page.evaluate(f"{box}.scrollWidth <= {box}.clientWidth")
            assert page.locator("#cases td").first.evaluate(
                "td => getComputedStyle(td).display") == "block"
    expect(page.get_by_label(re.compile("Slices to analyse"))).to_be_attached()
    page.set_viewport_size({"width": 1024, "height": 768})


def test_upload_result_confirm_list_and_sign_out(page, start_appliance, appliance_data,
                                                 slice_path: Path):
    # Prepare: an account made with the CLI, then the server.
    add_user(appliance_data, "alice")
    server = start_appliance()
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"  # no session: the upload page needs sign-in
    screenshot(page, "sign-in")
    assert sign_in(page, server.url, "alice", PASSWORD).status == 302
    assert path_of(page.url) == "/"

    # Execute: upload a real slice with the file input and analyse it.
    page.set_input_files("#images", str(slice_path))
    page.click("#analyse")
    page.wait_for_url(CASE_URL, wait_until="load")
    case_id = CASE_URL.search(page.url).group(1)

    label = assert_a_result_is_shown(page)

    # Execute: the clinician agrees with the model.
    agree = "#confirm-tumour" if label == "Tumour suspected" else "#confirm-none"
    page.click(agree)
    page.wait_for_url(re.compile(rf"/cases/{case_id}$"))

    # Assert: the status says so, and the case is listed as agreeing with the model only.
    expect(page.locator("#status")).to_contain_text("agrees with the model")
    expect(page.locator("#status")).to_contain_text("by alice")
    assert_chosen_label_is_seen(page, agree)
    screenshot(page, "case")
    page.click("nav >> text=Cases")
    page.click("main a:text-is('labelled, agrees with the model')")
    assert parse_qs(urlparse(page.url).query) == {"status": ["confirmed"]}
    expect(page.locator(f"#cases a[href$='/cases/{case_id}']")).to_have_text(case_id[:8])
    screenshot(page, "cases")
    page.click("main a:text-is('not labelled yet')")
    expect(page.locator("#cases")).to_contain_text("No cases.")

    # Execute: alice is an administrator; open the admin page from the menu.
    page.click("nav >> text=Admin")

    # Assert: it names the model in service, says the appliance works alone, lists alice.
    expect(page.locator("h1")).to_have_text("Administration")
    expect(page.locator("main")).to_contain_text("No coordinator configured")
    expect(page.locator("main table").first).to_contain_text("alice")
    screenshot(page, "admin")

    assert_fits_a_phone(page, server.url)

    # Execute: sign out.
    page.click("#logout")
    page.wait_for_url(re.compile(r"/login$"))

    # Assert: the case list is closed again; the browser is sent to the sign-in page.
    expect(page.locator("main")).to_contain_text("Signed out.")
    page.goto(f"{server.url}/cases/")
    assert path_of(page.url) == "/login"
    assert parse_qs(urlparse(page.url).query) == {"next": ["/cases/"]}
    expect(page.locator("#logout")).to_have_count(0)


def test_wrong_password_shows_the_error_and_stays_on_login(page, start_appliance,
                                                           appliance_data):
    # Prepare
    add_user(appliance_data, "alice")
    server = start_appliance()

    # Execute
    response = sign_in(page, server.url, "alice", "not the password")

    # Assert: 401, the error shown, still on /login without a session.
    assert response.status == 401
    assert path_of(page.url) == "/login"
    expect(page.locator("p.error[role=alert]")).to_have_text("Wrong user name or password.")
    expect(page.locator("#logout")).to_have_count(0)
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"
