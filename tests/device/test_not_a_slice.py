"""An image the bundle's slice check refuses gets 'not a brain MRI slice — no prediction'
from the API, the upload form and the command line, and nothing is stored."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from device.inference.predictor import create_predictor
from tests.device.bundles import with_slice_check
from tests.device.webclient import login, upload

MESSAGE = "not a brain MRI slice \u2014 no prediction"


@pytest.fixture
def refusing(services, tmp_path):
    """The served model with a slice check that refuses every image."""
    bundle = with_slice_check(services.slot.current.bundle, tmp_path / "refusing", 1 - 1e-6)
    services.slot.swap(create_predictor("litert", bundle))
    return bundle


def test_the_api_answers_422_and_stores_nothing(server, api_token, slice_bytes, services,
                                                refusing):
    response = requests.post(f"{server}/api/v1/predictions", timeout=30,
                             headers={"Authorization": f"Bearer {api_token}"},
                             files={"image": ("slice.jpg", slice_bytes)})

    assert response.status_code == 422
    assert response.json()["error"] == MESSAGE
    assert "probability" not in response.json() and services.store.count() == 0


def test_the_upload_form_names_the_refusal_and_keeps_the_slices_it_accepts(
        app, admin, slice_bytes, services, refusing, tmp_path):
    client = app.test_client()
    login(client)

    page = upload(client, ("film.jpg", slice_bytes))

    assert page.status_code == 422
    assert f"Refused: {MESSAGE}" in page.get_data(as_text=True)
    assert services.store.count() == 0
    services.slot.swap(create_predictor(
        "litert", with_slice_check(refusing, tmp_path / "passing", 1e-6)))
    upload(client, ("film.jpg", slice_bytes))
    assert services.store.count() == 1


def test_the_command_line_prints_the_refusal_for_that_file(refusing, data_dir):
    done = subprocess.run(
        [sys.executable, "-m", "device", "predict", "--json", "--model", str(refusing.path),
         str(data_dir / "yes/Y1.jpg")], capture_output=True, text=True, timeout=120)

    assert json.loads(done.stdout.strip().splitlines()[-1])["error"] == MESSAGE
