"""Heat maps off the request path (device.heatmaps): drawn after the answer once no
upload is in progress, from a bounded queue, so that viewing one is instant."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from device.heatmaps import HeatmapJob, HeatmapQueue
from models.core.preprocess import Crop


def _job(case_id: str) -> HeatmapJob:
    return HeatmapJob(case_id, predictor=None, image=np.zeros((4, 4, 1)),  # type: ignore
                      probability=0.5, crop=Crop(0, 0, 4, 4, 4))


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def drawn():
    """A queue whose drawing records case ids; closed after the test."""
    queue, ids = HeatmapQueue(capacity=3, idle_s=0.05), []
    queue.start(lambda job: ids.append(job.case_id))
    yield queue, ids
    queue.close()


def test_nothing_is_drawn_while_an_upload_is_in_progress(drawn) -> None:
    # Prepare
    queue, ids = drawn
    # Execute: a job queued while another upload is being analysed
    with queue.upload():
        queue.submit(_job("a"))
        time.sleep(0.3)
        during = list(ids)
    drawn_after = _wait_for(lambda: ids == ["a"])
    # Assert
    assert during == [] and drawn_after and queue.pending() == 0


def test_a_full_queue_drops_the_oldest_job(drawn) -> None:
    # Prepare
    queue, ids = drawn
    # Execute
    with queue.upload():
        for case_id in "abcde":
            queue.submit(_job(case_id))
        waiting = queue.pending()
    # Assert: the newest three are drawn, oldest first; the others are drawn when viewed
    assert waiting == 3 and queue.dropped == 2
    assert _wait_for(lambda: ids == ["c", "d", "e"])


def test_a_viewer_takes_a_queued_job_and_the_worker_skips_it(drawn) -> None:
    queue, ids = drawn
    with queue.upload():
        queue.submit(_job("a"))
        queue.submit(_job("b"))
        taken = queue.take("a")
    assert taken is not None and taken.case_id == "a" and queue.take("zz") is None
    assert _wait_for(lambda: ids == ["b"])


def test_a_failing_drawing_does_not_stop_the_worker() -> None:
    queue, ids = HeatmapQueue(idle_s=0.01), []

    def draw(job: HeatmapJob) -> None:
        if job.case_id == "bad":
            raise RuntimeError("simulated")
        ids.append(job.case_id)
    queue.start(draw)
    try:
        queue.submit(_job("bad"))
        queue.submit(_job("good"))
        assert _wait_for(lambda: ids == ["good"])
    finally:
        queue.close()


def test_an_api_upload_gets_its_heat_map_without_anyone_viewing_it(
        services, api_token, slice_bytes, app) -> None:
    # Prepare
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_token}"}
    # Execute: an upload, then nobody asks for its heat map
    response = client.post("/api/v1/predictions", headers=headers,
                           data={"image": (io.BytesIO(slice_bytes), "slice.jpg")})
    case_id = response.get_json()["case_id"]
    ready = _wait_for(lambda: services.store.get(case_id).heatmap_name is not None)
    # Assert: drawn in the background; viewing serves that file, drawing nothing new
    assert response.status_code == 201 and ready
    stored_name = services.store.get(case_id).heatmap_name
    stored = services.store.heatmap_path(services.store.get(case_id)).read_bytes()
    viewed = client.get(f"/cases/{case_id}/heatmap.png", headers=headers)
    assert viewed.status_code == 200 and viewed.data == stored
    # (the queue's thread counts the job until it has taken the next: a moment later)
    assert _wait_for(lambda: services.analyser.heatmaps.pending() == 0)
    assert services.store.get(case_id).heatmap_name == stored_name


def test_viewing_while_the_worker_draws_the_same_map_draws_it_once(
        services, api_token, slice_bytes, app) -> None:
    # Prepare: a slow drawing, so that the view arrives while it is in progress
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_token}"}
    calls, real = [], services.store.set_heatmap
    gate = threading.Event()

    def slow_set_heatmap(case_id, png):
        calls.append(case_id)
        gate.wait(5)
        return real(case_id, png)
    services.store.set_heatmap = slow_set_heatmap
    posted = client.post("/api/v1/predictions", headers=headers,
                         data={"image": (io.BytesIO(slice_bytes), "slice.jpg")})
    case_id = posted.get_json()["case_id"]
    assert _wait_for(lambda: calls == [case_id])
    # Execute: the view waits for the worker's drawing instead of drawing again
    threading.Timer(0.2, gate.set).start()
    viewed = client.get(f"/cases/{case_id}/heatmap.png", headers=headers)
    # Assert
    assert viewed.status_code == 200 and viewed.data[:4] == b"\x89PNG"
    assert calls == [case_id]
