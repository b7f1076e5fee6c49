""""About this model": the model in service described from its signed manifest, and
linked from every result."""
from __future__ import annotations

from tests.device.webclient import login, signed_in_with_a_case


def test_the_about_page_shows_the_version_sites_test_figures_and_limits(app, admin,
                                                                        services):
    client = app.test_client()
    login(client)
    manifest = services.slot.current.bundle.manifest

    page = client.get("/model/").get_data(as_text=True)

    assert f"Version {manifest['version']}" in page
    sites = manifest["data"]["sites"]   # the shipped bundle records its sites
    assert len(sites) >= 2
    for site, record in sites.items():
        assert f"<td>{site}</td><td>{record['slices']}</td>" in page
    tested = manifest["metrics"]["test_by_site"]
    assert tested
    for figures in tested.values():  # each site's held-out balanced accuracy, in percent
        if figures.get("balanced_accuracy") is not None:
            assert f"<td>{100 * figures['balanced_accuracy']:.0f}%</td>" in page
    assert "about one answer in three or four is wrong" in page
    assert manifest["data"]["license_note"] in page


def test_each_result_links_to_it_and_it_needs_a_session(app, admin, services, slice_bytes):
    client, case = signed_in_with_a_case(app, services, slice_bytes)

    page = client.get(f"/cases/{case.id}").get_data(as_text=True)

    assert 'id="about-model"' in page and 'href="/model/"' in page
    assert app.test_client().get("/model/").status_code == 302  # to sign-in
