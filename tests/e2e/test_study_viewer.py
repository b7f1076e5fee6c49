"""A series in the browser: a zipped DICOM study uploaded, its study page (verdict, strip,
slices; labelled as a whole), and a slice examined in the viewer (zoom, window/level,
heat-map opacity), at desktop and phone widths; without JavaScript the case page still
shows the slice and its heat map."""
from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.device.images import make_dicom
from tests.e2e.conftest import PASSWORD, add_user
from tests.e2e.test_browser import screenshot, sign_in

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

STUDY_URL = re.compile(r"/studies/([0-9a-f]{32})$")
STUDY_UID = "1.2.826.0.1.3680043.8.498.44444444444444444444"


def study_zip(slice_path: Path, folder: Path, slices: int = 4) -> Path:
    """A series as an MR console exports it: 16-bit DICOM files of one study, zipped."""
    gray = cv2.imread(str(slice_path), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 64
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n in range(1, slices + 1):
            z.writestr(f"SERIES/IM{n:04d}.dcm", make_dicom(
                np.roll(gray, 3 * n, axis=1), StudyInstanceUID=STUDY_UID,
                SeriesInstanceUID=STUDY_UID + ".1", InstanceNumber=n))
    path = folder / "series.zip"
    path.write_bytes(buf.getvalue())
    return path


def uploaded_study(page, server, slice_path: Path, tmp_path: Path) -> str:
    """Sign in, upload the zipped study; returns the study page's URL."""
    sign_in(page, server.url, "alice", PASSWORD)
    page.set_input_files("#images", str(study_zip(slice_path, tmp_path)))
    page.click("#analyse")
    page.wait_for_url(re.compile(r"/upload/results/"), wait_until="load")
    page.click(".series-summary h2 a")
    page.wait_for_url(STUDY_URL, wait_until="load")
    return page.url


@pytest.mark.parametrize("width", [1280, 375])
def test_a_study_is_shown_labelled_and_examined_in_the_viewer(
        page, start_appliance, appliance_data, slice_path: Path, tmp_path: Path, width: int):
    # Prepare: an administrator; the study uploaded as one .zip
    add_user(appliance_data, "alice")
    server = start_appliance()
    page.set_viewport_size({"width": width, "height": 900})
    study = uploaded_study(page, server, slice_path, tmp_path)

    # Assert: the verdict by its rule, a bar per slice, the slices listed
    expect(page.locator("#study-verdict")).to_have_text(re.compile("suspected"))
    expect(page.locator("#study-summary")).to_contain_text("any of its slices")
    expect(page.locator("#study-strip rect[class^=bar-]")).to_have_count(4)
    expect(page.locator("#study-slices tr")).to_have_count(5)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing cut off
    if width == 1280:
        screenshot(page, "study")

    # Execute: the clinician labels the whole study "no tumour"
    page.once("dialog", lambda dialog: dialog.accept())  # "label N slices no tumour?"
    page.click("#study-none")
    page.wait_for_url(study)
    # Assert: recorded, and each slice labelled with it
    expect(page.locator("#study-label-status")).to_contain_text("no tumour")
    expect(page.locator("#study-slices")).not_to_contain_text("not labelled")

    # Execute: open the most suspicious slice, and use the viewer
    page.click("#study-slices tr:nth-child(2) a")
    page.wait_for_selector("#viewer:not([hidden])")
    readout = page.locator("#viewer-readout")
    expect(readout).to_contain_text("zoom")
    before = readout.inner_text()
    page.click("#viewer [data-zoom='1.25']")
    page.locator("#viewer-level").fill("9000")
    page.locator("#viewer-opacity").fill("100")
    # Assert: zoom and window (over the 16-bit values of the DICOM) changed what is shown;
    # the slice is painted, not blank
    expect(readout).not_to_have_text(before)
    expect(readout).to_contain_text("level 9000")
    painted = page.evaluate("""() => {
        const c = document.getElementById('viewer-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0; for (let i = 0; i < d.length; i += 4) lit += d[i] + d[i+1] + d[i+2] > 0;
        return lit / (d.length / 4); }""")
    assert painted > 0.05
    # the heat map has the slice's own shape: it lies over it
    page.wait_for_function("""() => [...document.querySelectorAll('.stack img')].every(
        i => i.complete && i.naturalWidth > 0)""")
    shapes = page.evaluate("""() => [...document.querySelectorAll('.stack img')].map(
        i => i.naturalWidth / i.naturalHeight)""")
    assert shapes[0] == pytest.approx(shapes[1], rel=0.02)
    if width == 1280:
        screenshot(page, "viewer")


def test_without_javascript_the_case_page_shows_the_slice_and_its_heat_map(
        browser, start_appliance, appliance_data, slice_path: Path, tmp_path: Path):
    add_user(appliance_data, "alice")
    server = start_appliance()
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        uploaded_study(page, server, slice_path, tmp_path)
        page.click("#study-slices tr:nth-child(2) a")
        page.wait_for_load_state("networkidle")

        expect(page.locator("#viewer")).to_be_hidden()
        loaded = page.evaluate("""() => [...document.querySelectorAll('.images img')].map(
            i => i.complete && i.naturalWidth > 0)""")
        assert loaded == [True, True, True]
    finally:
        context.close()


def test_a_dropped_folder_is_sent_as_its_files(page, start_appliance, appliance_data,
                                               slice_path: Path, tmp_path: Path):
    # Prepare: a folder as the browser hands a dropped directory to the page (its entry
    # API faked at that seam: Playwright cannot drop a real one), with a nested folder and
    # a hidden file beside three slices
    add_user(appliance_data, "alice")
    server = start_appliance()
    sign_in(page, server.url, "alice", PASSWORD)
    with zipfile.ZipFile(study_zip(slice_path, tmp_path, slices=3)) as z:
        slices = [base64.b64encode(z.read(n)).decode() for n in z.namelist()]
    # Execute
    page.evaluate("""slices => {
        const file = (name, b64) => ({isFile: true, isDirectory: false, name,
            file: done => done(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))],
                                        name))});
        const folder = (name, children) => ({isFile: false, isDirectory: true, name,
            createReader: () => { let given = false; return {readEntries: done => {
                done(given ? [] : children); given = true; }}; }});
        const root = folder("SERIES", [file("IM1.dcm", slices[0]), file(".DS_Store", "AA=="),
            file("DICOMDIR", "AA=="),
            folder("MORE", [file("IM2.dcm", slices[1]), file("IM3.dcm", slices[2])])]);
        const drop = new Event("drop", {bubbles: true, cancelable: true});
        drop.dataTransfer = {items: [{webkitGetAsEntry: () => root}], files: []};
        document.getElementById("drop").dispatchEvent(drop);
    }""", slices)
    page.wait_for_url(re.compile(r"/upload/results/"), wait_until="load")
    # Assert: the three slices, one study, the hidden file and the index left out
    expect(page.locator("table tr")).to_have_count(4)
    expect(page.locator(".series-summary")).to_contain_text("3 slices")
    expect(page.locator("main")).not_to_contain_text("DS_Store")
    expect(page.locator("main")).not_to_contain_text("DICOMDIR")
