"""``python -m device.bench``: the appliance against a bare durable peer, in one run.

The servers run as real processes on loopback, on the same bundle's model, and get the
same slices from the same clients (:mod:`device.bench.load`); the peer
(:mod:`device.bench.peer`) decodes, resizes, runs LiteRT once and commits the upload to
SQLite before answering; a second peer prepares the input with the training
preprocessing instead of a resize, so the appliance's own cost is seen apart from what
any server of these models must do. The machine is shared and timings are noisy, so
rounds of the servers alternate and the figures that count are the ratios. ``--cpus 0``
pins every server to one core (``taskset -c 0``), a Pi-like figure. Then the appliance
alone takes the 40 slices as one .zip of DICOM files (``POST /api/v1/series``).
In-process: the preprocessing's CPU time per slice on one core, and the background heat
map.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2

from device.bench import load, servers
from device.bench.load import Result

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SERIES = "site_ljubljana_ms/no/ms_patient01_*.jpg"  # 512x512 JPEG slices of one patient
SERIES_LEN = 40
BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default_bundle"
LARGE_UPLOADS = 8


def series_slices() -> list[bytes]:
    """The first 40 slices of one patient of the MS site, as JPEG bytes."""
    files = sorted(DATA.glob(SERIES))[:SERIES_LEN]
    if len(files) < SERIES_LEN:
        raise SystemExit(f"need {SERIES_LEN} slices matching {DATA / SERIES}")
    return [f.read_bytes() for f in files]


def dicom_series_zip(slices: list[bytes]) -> bytes:
    """The series as an MR console exports it: one 16-bit DICOM file per slice, zipped."""
    import io
    import zipfile

    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, jpeg in enumerate(slices, start=1):
            gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
            ds.Modality = "MR"
            ds.set_pixel_data(gray.astype(np.uint16) * 16, "MONOCHROME2", 16)
            one = io.BytesIO()
            pydicom.dcmwrite(one, ds, enforce_file_format=True)
            archive.writestr(f"SERIES/IM{n:04d}.dcm", one.getvalue())
    return buf.getvalue()


def large_slice() -> bytes:
    """A slice as a 12-megapixel camera frame (4056x3040 JPEG), the largest upload a
    clinic's camera makes."""
    gray = cv2.imread(str(DATA / "brain_tumor_dataset" / "yes" / "Y41.jpg"),
                      cv2.IMREAD_GRAYSCALE)
    frame = cv2.resize(gray, (4056, 3040), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def settle(server: servers.Server) -> None:
    """Wait until the appliance has drawn its queued heat maps (at most 20 s), so that
    its background work never runs during the peer's turn."""
    if server.name != "appliance":
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"{server.target.url}/metrics", timeout=5).read()
        found = re.search(rb"^neuroedge_heatmaps_waiting ([\d.]+)", text, re.M)
        if found is None or float(found.group(1)) == 0:
            return
        time.sleep(0.1)


def alternate(group: list[servers.Server], rounds: int, run) -> dict[str, list]:
    """``run(target)`` for each server, ``rounds`` times, in alternating order."""
    out: dict[str, list] = {s.name: [] for s in group}
    for n in range(rounds):
        for server in (group if n % 2 == 0 else group[::-1]):
            out[server.name].append(run(server.target))
            settle(server)
    return out


def measure(group: list[servers.Server], slices: list[bytes], large: bytes,
            args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every figure of every server."""
    figures: dict[str, dict[str, float]] = {s.name: {} for s in group}
    bodies = [load.multipart(s) for s in slices]
    for server in group:  # warm up: first requests load code paths and pages
        load.hammer(server.target, bodies, 2, 1.0)
        settle(server)
    for clients in (1, 4):
        runs = alternate(group, args.rounds,
                         lambda t: load.hammer(t, bodies, clients, args.seconds))
        for name, results in runs.items():
            pooled = Result()
            for one in results:
                pooled.merge(one)
            figures[name].update({f"p50_{clients}": pooled.percentile(50),
                                  f"p99_{clients}": pooled.percentile(99),
                                  f"rate_{clients}": pooled.rate,
                                  f"failed_{clients}": pooled.failures})
    runs = alternate(group, args.rounds, lambda t: load.series(t, bodies, 4))
    for name, results in runs.items():
        figures[name]["series_s"] = load.median([seconds for seconds, _ in results])
        figures[name]["series_failed"] = sum(failed for _, failed in results)
    for server in group:
        figures[server.name]["rss_serving"] = server.memory_mb()[1]
    big = [load.multipart(large)] * LARGE_UPLOADS
    runs = alternate(group, 2, lambda t: load.series(t, big, LARGE_UPLOADS))
    for server in group:
        figures[server.name]["rss_large"] = server.memory_mb()[1]
        figures[server.name]["large_failed"] = sum(f for _, f in runs[server.name])
    # Last, so that its memory is in no figure above. The appliance alone: the peer
    # takes no series.
    app = next(s for s in group if s.name == "appliance")
    zipped = load.multipart(dicom_series_zip(slices), "series.zip", "archive")
    api = load.Connection(load.Target(app.target.url, "/api/v1/series", app.target.headers))
    try:
        timed = [api.post(zipped) for _ in range(args.rounds)]
    finally:
        api.close()
    figures["appliance"]["series_zip_s"] = load.median([ms / 1000 for _, ms in timed])
    figures["appliance"]["series_zip_failed"] = sum(status != 200 for status, _ in timed)
    return figures


ROWS = [  # key, label, unit, target on the ratio appliance / peer (or absolute)
    ("p50_1", "1 client: p50 upload -> result", "ms", "<= 1.5x"),
    ("p99_1", "1 client: p99", "ms", ""),
    ("rate_1", "1 client: uploads/s", "/s", ""),
    ("p50_4", "4 clients: p50", "ms", ""),
    ("p99_4", "4 clients: p99", "ms", ""),
    ("rate_4", "4 clients: uploads/s", "/s", ">= 0.7x"),
    ("series_s", f"series of {SERIES_LEN} slices, all results", "s", "<= 1.5 s, one core"),
    ("rss_serving", "peak RSS serving", "MB", "<= 250 MB"),
    ("rss_large", f"peak RSS after {LARGE_UPLOADS} x 12 MP uploads at once", "MB",
     "<= 300 MB"),
]


def report(figures: dict[str, dict[str, float]], cpus: str | None) -> None:
    """The figures of the three servers; the ratios of the appliance's to the peer's
    (the targets) and to the peer's with the training preprocessing."""
    peer, prep, app = figures["peer"], figures[servers.PREP_PEER], figures["appliance"]
    where = f"every server pinned to CPU {cpus} (taskset -c {cpus})" if cpus else \
        "every server on all CPUs"
    print(f"\ndevice bench: appliance vs bare durable peer, {where}")
    print(f"  {'':46s} {'peer':>9s} {'peer+prep':>10s} {'appliance':>10s} {'ratio':>7s} "
          f"{'vs +prep':>8s}  target (on the ratio to the peer)")
    for key, label, unit, target in ROWS:
        ratio, to_prep = (app[key] / base[key] if base[key] else float("nan")
                          for base in (peer, prep))
        digits = 2 if unit == "s" else 1
        print(f"  {label + ' (' + unit + ')':46s} {peer[key]:9.{digits}f} "
              f"{prep[key]:10.{digits}f} {app[key]:10.{digits}f} {ratio:6.2f}x "
              f"{to_prep:7.2f}x  {target}")
    print(f"  a {SERIES_LEN}-slice DICOM series as one .zip (POST /api/v1/series), all "
          f"results: {app['series_zip_s']:.2f} s (appliance only; target <= 3 s)")
    failed = {f"{name} {k}": v for name, f in figures.items() for k, v in f.items()
              if "failed" in k and v}
    print(f"  failed requests: {failed or 'none'}")


def in_process(bodies: list[bytes]) -> None:
    """In this process: preprocessing CPU time per slice on one core, what storing the
    upload as uploaded saves against a PNG re-encoding, and one heat map."""
    from device.config import load_settings
    from device.imaging import decode_upload
    from device.inference.heatmap import heatmap_png
    from device.services import load_predictor
    from models.core import preprocess as mp
    predictor = load_predictor(load_settings(gpio=False), BUNDLE)
    uploads = [decode_upload(b, 20 << 20) for b in bodies]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core: no OpenCV worker threads
    try:
        cpu, png_ms = [], []
        for _ in range(3):
            for upload in uploads:
                start = time.thread_time()
                x = mp.preprocess(upload.pixels, predictor.input_spec)
                cpu.append((time.thread_time() - start) * 1000)
        for upload in uploads:
            start = time.thread_time()
            upload.png()
            png_ms.append((time.thread_time() - start) * 1000)
    finally:
        cv2.setNumThreads(threads)
    kept = sum(len(u.stored()) for u in uploads) / len(uploads) / 1024
    png = sum(len(u.png()) for u in uploads) / len(uploads) / 1024
    x, crop = mp.preprocess_with_crop(uploads[0].pixels, predictor.input_spec)
    heat = _one_core_ms(lambda: heatmap_png(predictor, x, predictor.predict(x).probability,
                                            crop))
    print(f"\nin process, the {len(uploads)} series slices (512x512 JPEG):")
    print(f"  preprocessing         {load.median(cpu):6.2f} ms CPU per slice on one core "
          "(median; target <= 3 ms)")
    print(f"  stored as uploaded    {kept:6.1f} KB per slice; a PNG re-encoding would be "
          f"{png:.1f} KB and {load.median(png_ms):.2f} ms CPU")
    print(f"  one heat map          {heat:6.1f} ms on one core, best of 3 (13 x 13 "
          "occluded copies at a stride of 8 px, in batches of 13; target <= 150 ms)")


def _one_core_ms(work) -> float:
    """Best of three wall times of ``work`` with the whole process on one core."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            work()
            times.append((time.perf_counter() - start) * 1000)
        return min(times)
    finally:
        os.sched_setaffinity(0, cores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m device.bench",
        description="The appliance against a bare durable peer, in one run: latency and "
                    "throughput at 1 and 4 clients, a 40-slice series and peak memory, "
                    "as ratios (the machine may be shared: ratios compare, times do not).")
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--cpus", help="pin every server, e.g. 0 (taskset -c)")
    args = parser.parse_args(argv)
    slices = series_slices()
    in_process(slices)
    with tempfile.TemporaryDirectory() as tmp:
        group: list[servers.Server] = []
        try:
            for prepare in (False, True):
                group.append(servers.start_peer(BUNDLE / "model.tflite",
                                                Path(tmp) / f"peer{prepare:d}", args.cpus,
                                                prepare))
            group.append(servers.start_appliance(Path(tmp) / "appliance", args.cpus))
            figures = measure(group, slices, large_slice(), args)
        finally:
            for server in group:
                server.stop()
    report(figures, args.cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
