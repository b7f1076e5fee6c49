"""``python -m device.bench``: the appliance's performance figures, as ratios.

In-process, on the shipped bundle: raw LiteRT inference; decode + preprocess +
inference + store of a 512x512 JPEG (as a multiple of the raw inference); the heat map.
Then a real server process under ``wrk`` (4 connections on loopback) posting to the
JSON API, and that process's resident memory.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2

SLICE = Path(__file__).resolve().parents[2] / "shared/data/brain_tumor_dataset/yes/Y1.jpg"
WRK_SCRIPT = """
local f = io.open(os.getenv("NE_BODY"), "rb"); local body = f:read("*all"); f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("NE_BOUNDARY")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("NE_TOKEN")
"""


def p50_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def jpeg_512() -> bytes:
    img = cv2.resize(cv2.imread(str(SLICE)), (512, 512), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def in_process(data_dir: Path) -> dict:
    from device.analysis import analyse
    from device.config import load_settings
    from device.inference.heatmap import heatmap_png
    from device.services import build_services
    from models.core.preprocess import preprocess_bytes
    svc = build_services(load_settings(data_dir=data_dir, gpio=False, secret_key="bench"))
    try:
        predictor = svc.slot.current
        data = jpeg_512()
        image = preprocess_bytes(data, predictor.input_spec)
        raw = p50_ms(lambda: predictor.probabilities(image[None]), 300)
        full = p50_ms(lambda: analyse(svc, data, "api"), 100)
        heat = p50_ms(lambda: heatmap_png(predictor, image, 0.5), 20)
    finally:
        svc.close()
    return {"raw_inference_ms": raw, "upload_pipeline_ms": full, "heatmap_ms": heat}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident memory of a process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa
    return get("VmRSS"), get("VmHWM")


def under_load(data_dir: Path, seconds: int = 10) -> dict:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    cli = [sys.executable, "-m", "device"]
    token = subprocess.run([*cli, "token", "create", "bench", "--data-dir", str(data_dir)],
                           capture_output=True, text=True, env=env)
    if token.returncode != 0:  # the token needs a user
        subprocess.run([*cli, "adduser", "bench", "--password-stdin", "--data-dir",
                        str(data_dir)], input="benchmark-password\n", text=True, env=env,
                       check=True, capture_output=True)
        token = subprocess.run([*cli, "token", "create", "bench", "--data-dir",
                                str(data_dir)], capture_output=True, text=True, env=env,
                               check=True)
    port = free_port()
    server = subprocess.Popen([*cli, "serve", "--data-dir", str(data_dir), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        boundary = "neuroedgebench"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"s.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + \
            jpeg_512() + f"\r\n--{boundary}--\r\n".encode()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "body").write_bytes(body)
            (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
            out = subprocess.run(
                ["wrk", "-t2", "-c4", f"-d{seconds}s", "-s", str(Path(tmp) / "post.lua"),
                 f"{url}/api/v1/predictions"], capture_output=True, text=True,
                env={**env, "NE_BODY": str(Path(tmp) / "body"), "NE_BOUNDARY": boundary,
                     "NE_TOKEN": token.stdout.strip().splitlines()[-1]}).stdout
        rss, peak = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"uploads_per_s": rate, "non_2xx": int(bad.group(1)) if bad else 0,
            "rss_mb": rss, "peak_rss_mb": peak}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = in_process(Path(tmp) / "inproc")
        load = under_load(Path(tmp) / "served")
    ratio = figures["upload_pipeline_ms"] / figures["raw_inference_ms"]
    print("device bench (shipped bundle, LiteRT, 512x512 JPEG; p50 of repeated runs)")
    print(f"  raw LiteRT inference        {figures['raw_inference_ms']:8.2f} ms   (baseline)")
    print(f"  decode+preprocess+infer+store {figures['upload_pipeline_ms']:6.2f} ms   "
          f"= {ratio:.1f}x raw (target <= 3x)")
    print(f"  occlusion heat map          {figures['heatmap_ms']:8.1f} ms   "
          f"= {figures['heatmap_ms'] / figures['raw_inference_ms']:.0f}x raw (target <= 150 ms)")
    if "skipped" in load:
        print(f"  load test skipped: {load['skipped']}")
    else:
        print(f"  JSON API, wrk 4 connections {load['uploads_per_s']:8.1f} uploads/s "
              f"(target >= 50; non-2xx: {load['non_2xx']})")
        print(f"  serving process RSS         {load['rss_mb']:8.1f} MB (peak "
              f"{load['peak_rss_mb']:.1f}; target <= 300)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
