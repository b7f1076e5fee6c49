"""A series uploaded as one .zip through the browser form: each slice is a case with its
own line; a damaged member, a non-slice or a bound reached costs its own line only; an
unsafe or encrypted archive is refused whole and nothing is stored."""
from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest

from device.imaging.archive import MAX_MEMBERS, members
from device.exc import InputError, TooLargeError
from tests.device.images import PATIENT, make_dicom
from tests.device.webclient import login, upload


def zipped(*entries: tuple[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def series(slice_bytes) -> list[tuple[str, bytes]]:
    """Three slices as an MR console exports them: DICOM files in a folder (a real slice
    turned into 16-bit pixels), plus what macOS adds."""
    import cv2
    gray = cv2.imdecode(np.frombuffer(slice_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    dcm = make_dicom(gray.astype(np.uint16) * 16)
    return [(f"SERIES_1/IM{n:04d}.dcm", dcm) for n in range(1, 4)] + [
        ("__MACOSX/SERIES_1/._IM0001.dcm", b"\x00\x05\x16\x07"), ("SERIES_1/", b"")]


def results_page(client, response) -> str:
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    return client.get(response.headers["Location"]).get_data(as_text=True)


def test_each_slice_of_a_zipped_series_becomes_a_case(app, admin, services, series):
    client = app.test_client()
    login(client)

    page = results_page(client, upload(client, ("series.zip", zipped(*series))))

    assert services.store.count() == 3
    for n in range(1, 4):
        assert f"series.zip: SERIES_1/IM{n:04d}.dcm" in page
    assert "MACOSX" not in page and "Refused" not in page
    names = sorted(services.store.get_info(c.id).file_name for c in services.store.list())
    assert names == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]
    assert PATIENT[0].encode() not in b"".join(
        services.store.image_path(c).read_bytes() for c in services.store.list())


def test_a_bad_member_costs_its_line_only(app, admin, services, series):
    client = app.test_client()
    login(client)
    good = series[0][1]
    entries = [("a/IM1.dcm", good), ("a/notes.txt", b"not a slice"),
               ("a/inner.zip", zipped(("x.dcm", good))), ("a/IM2.dcm", good)]

    page = results_page(client, upload(client, ("series.zip", zipped(*entries))))

    assert services.store.count() == 2
    assert page.count("Refused") == 2
    assert "unsupported file type" in page and "an archive inside the archive" in page


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/evil.dcm", "C:\\\\evil.dcm",
                                  "a/../../evil.dcm"])
def test_an_archive_with_a_member_outside_it_is_refused_whole(app, admin, services, series,
                                                              name):
    client = app.test_client()
    login(client)
    data = zipped(series[0], (name, series[1][1]))

    response = upload(client, ("series.zip", data))

    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "a member outside it" in page
    assert services.store.count() == 0


def test_bounds_on_members_and_inflated_size(series):
    limit = 1 << 20
    bomb = zipped(("big.dcm", bytes(limit + 1)))  # a few KB that inflate past the limit
    many = zipped(*[(f"s/{n}.dcm", b"x") for n in range(MAX_MEMBERS + 1)])

    assert len(bomb) < 10_000
    ((name, error),) = list(members(bomb, limit))
    assert name == "big.dcm" and isinstance(error, TooLargeError)
    with pytest.raises(TooLargeError, match=f"at most {MAX_MEMBERS}"):
        list(members(many, limit))
    total = zipped(*[(f"s/{n}.dcm", bytes(limit)) for n in range(21)])
    with pytest.raises(TooLargeError, match="unpacks to more than 20 MB"):
        list(members(total, limit))


def test_damaged_encrypted_and_empty_archives_are_refused_clearly(series):
    data = bytearray(zipped(("a.dcm", series[0][1])))
    truncated = bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="not a readable .zip archive"):
        list(members(truncated, 1 << 20))
    # The "encrypted" flag in the central directory, as a password-protected export sets
    central = bytes(data).rindex(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, central + 8)[0]
    struct.pack_into("<H", data, central + 8, flags | 0x1)
    with pytest.raises(InputError, match="encrypted"):
        list(members(bytes(data), 1 << 20))
    with pytest.raises(InputError, match="holds no file"):
        list(members(zipped(("__MACOSX/._a", b"")), 1 << 20))


def test_the_api_takes_a_zipped_series_and_answers_a_line_per_slice(
        app, api_token, services, series):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_token}"}
    data = zipped(*series[:2], ("SERIES_1/readme.txt", b"exported by a viewer"), series[2])

    answer = client.post("/api/v1/series", headers=headers,
                         data={"archive": (io.BytesIO(data), "series.zip"),
                               "reference": "ACC-7"})

    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert [line["name"] for line in body["results"]] == [
        "SERIES_1/IM0001.dcm", "SERIES_1/IM0002.dcm", "SERIES_1/readme.txt",
        "SERIES_1/IM0003.dcm"]
    assert body["cases"] == 3 == services.store.count()
    refused = body["results"][2]
    assert refused["status"] == 415 and "unsupported file type" in refused["error"]
    first = body["results"][0]
    assert 0 <= first["probability"] <= 1 and first["reference"] == "ACC-7"
    assert services.store.get_info(first["case_id"]).file_name == "IM0001.dcm"


@pytest.mark.parametrize("fields, status, message", [
    ({}, 400, "'archive'"),
    ({"archive": (io.BytesIO(b"\x89PNG not a zip"), "a.png")}, 415, "must be a .zip"),
    ({"archive": (io.BytesIO(zipped(("../x.dcm", b"x"))), "s.zip")}, 400, "outside it"),
    ({"archive": (io.BytesIO(zipped(("a.dcm", b"x"))), "s.zip"), "reference": "x" * 65},
     400, "reference must be text of at most 64"),
])
def test_the_api_refuses_what_is_not_a_safe_series(app, api_token, services, fields, status,
                                                   message):
    client = app.test_client()

    answer = client.post("/api/v1/series", data=fields,
                         headers={"Authorization": f"Bearer {api_token}"})

    assert answer.status_code == status and message in answer.get_data(as_text=True)
    assert services.store.count() == 0


def test_a_zipped_series_gets_a_summary_by_its_stated_rule(app, admin, api_token, services,
                                                           series, data_dir):
    # Prepare: the series with a tumour slice of the Kaggle set among its slices
    import cv2
    tumour = cv2.imread(str(data_dir / "yes" / "Y1.jpg"), cv2.IMREAD_GRAYSCALE)
    entries = [*series[:3], ("SERIES_1/IM0004.dcm", make_dicom(tumour.astype(np.uint16)))]
    client = app.test_client()
    login(client)
    # Execute
    page = results_page(client, upload(client, ("series.zip", zipped(*entries))))
    api = client.post("/api/v1/series", headers={"Authorization": f"Bearer {api_token}"},
                      data={"archive": (io.BytesIO(zipped(*entries)), "series.zip")})
    # Assert: the rule is stated, the counts follow it, the most suspicious come first
    summary = api.get_json()["summary"]
    cases = {c.id: c for c in services.store.list()}
    ranked = [cases[s["case_id"]].probability for s in summary["most_suspicious"]]
    assert summary["slices"] == 4 and ranked == sorted(ranked, reverse=True)
    assert summary["suspected"] == sum(
        c.predicted_label for c in cases.values() if c.source == "api")
    assert summary["series_suspected"] == (summary["suspected"] > 0)
    assert "any of its slices" in summary["rule"]
    assert "Most suspicious first" in page and "any of its slices" in page
    assert "series-summary" in page and "Grouped by their archive" in page


def test_separate_files_in_one_batch_get_no_series_verdict(app, admin, slice_bytes):
    client = app.test_client()
    login(client)

    page = results_page(client, upload(client, ("a.jpg", slice_bytes), ("b.jpg", slice_bytes)))

    assert "series-summary" not in page
