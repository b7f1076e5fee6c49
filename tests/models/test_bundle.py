"""Signed bundles: round trip, tamper detection, rollback refusal, safe archives."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from models.core import bundle, signing, weights

D = 8
MODEL_BYTES = b"TFL3" + bytes(range(256)) * 4  # the bundle layer never parses the model


def make_head(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32)
            for n, s in weights.head_shapes(D).items()}


FIELDS = {"version": 3, "parent_version": 2, "architecture": "edge",
          "input": {"height": 224, "width": 224, "channels": 3, "range": [0, 255]},
          "threshold": 0.5, "uncertain_logit_band": 0.5, "metrics": {"accuracy": 0.9},
          "training": {"epochs": 5}}


@pytest.fixture
def key():
    return signing.generate_signing_key()


@pytest.fixture
def bdir(tmp_path, key):
    out = tmp_path / "bundle"
    bundle.write_bundle(out, MODEL_BYTES, make_head(), FIELDS, key)
    return out


def flip_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip(bdir, key):
    # Execute
    b = bundle.verify_bundle(bdir, [key.verify_key])
    # Assert
    assert b.version == 3 and b.parent_version == 2 and b.threshold == 0.5
    assert b.signer == signing.key_id(key.verify_key)
    assert b.model_path.read_bytes() == MODEL_BYTES
    assert b.labels == ("no_tumour", "tumour")
    assert b.manifest["head"] == {"embedding_dim": D, "hidden": 32}
    assert b.manifest["created_at"].endswith("Z")
    head = b.load_head()
    for name, arr in make_head().items():
        np.testing.assert_array_equal(head[name], arr)
    assert sorted(os.listdir(bdir)) == ["head.npz", "manifest.json", "model.tflite", "signature"]
    assert len((bdir / "signature").read_bytes()) == 64


def test_manifest_on_disk_is_canonical_and_readable(bdir):
    raw = (bdir / "manifest.json").read_bytes()
    manifest = bundle.read_manifest(bdir)
    assert raw == bundle.canonical_bytes(manifest) + b"\n"
    assert manifest["files"]["model.tflite"]["bytes"] == len(MODEL_BYTES)


@pytest.mark.parametrize("name, expected", [
    ("manifest.json", (bundle.ManifestError, bundle.SignatureError)),
    ("model.tflite", bundle.IntegrityError),
    ("head.npz", bundle.IntegrityError),
    ("signature", bundle.SignatureError),
])
def test_any_flipped_byte_is_refused(bdir, key, name, expected):
    # Prepare
    flip_middle(bdir / name)
    # Execute / Assert
    with pytest.raises(expected):
        bundle.verify_bundle(bdir, [key.verify_key])


def test_every_byte_of_manifest_is_protected(bdir, key):
    # Flipping any one byte must be caught: it changes the signed content or the
    # canonical form. Check every position, not just the middle.
    original = (bdir / "manifest.json").read_bytes()
    for i in range(len(original)):
        (bdir / "manifest.json").write_bytes(
            original[:i] + bytes([original[i] ^ 0x01]) + original[i + 1:])
        with pytest.raises(bundle.BundleError):
            bundle.verify_bundle(bdir, [key.verify_key])


def test_untrusted_key_refused(bdir):
    with pytest.raises(bundle.SignatureError) as err:
        bundle.verify_bundle(bdir, [signing.generate_signing_key().verify_key])
    assert isinstance(err.value, signing.SignatureError) and isinstance(err.value, ValueError)


def test_missing_signature_and_missing_file(bdir, key):
    (bdir / "model.tflite").unlink()
    with pytest.raises(bundle.IntegrityError, match="model.tflite"):
        bundle.verify_bundle(bdir, [key.verify_key])
    (bdir / "signature").unlink()
    with pytest.raises(bundle.SignatureError):
        bundle.verify_bundle(bdir, [key.verify_key])


def test_extra_file_refused(bdir, key):
    (bdir / "evil.py").write_text("print('hi')")
    with pytest.raises(bundle.IntegrityError, match="evil.py"):
        bundle.verify_bundle(bdir, [key.verify_key])


def test_symlinked_file_refused(bdir, key, tmp_path):
    target = tmp_path / "elsewhere.tflite"
    target.write_bytes(MODEL_BYTES)
    (bdir / "model.tflite").unlink()
    (bdir / "model.tflite").symlink_to(target)
    with pytest.raises(bundle.IntegrityError, match="model.tflite"):
        bundle.verify_bundle(bdir, [key.verify_key])


def test_fifo_under_listed_name_refused_without_hanging(bdir, key):
    (bdir / "head.npz").unlink()
    os.mkfifo(bdir / "head.npz")
    with pytest.raises(bundle.IntegrityError, match="not a regular file"):
        bundle.verify_bundle(bdir, [key.verify_key])


@pytest.mark.parametrize("name, error", [("manifest.json", bundle.ManifestError),
                                         ("signature", bundle.SignatureError)])
def test_fifo_as_manifest_or_signature_refused_without_hanging(bdir, key, name, error):
    # Before, only the files the manifest lists were opened this way: a FIFO planted
    # as manifest.json or signature hung the verifier (and `models verify`) for ever.
    data = (bdir / name).read_bytes()
    (bdir / name).unlink()
    os.mkfifo(bdir / name)
    with pytest.raises(error, match="not a regular file|no readable signature"):
        bundle.verify_bundle(bdir, [key.verify_key])
    (bdir / name).unlink()
    (bdir / name).write_bytes(data)
    assert bundle.verify_bundle(bdir, [key.verify_key]).version == 3


def test_version_gate(bdir, key):
    assert bundle.verify_bundle(bdir, [key.verify_key], min_version=2).version == 3
    for current in (3, 4):
        with pytest.raises(bundle.VersionError, match="roll back"):
            bundle.verify_bundle(bdir, [key.verify_key], min_version=current)


def test_path_traversal_in_manifest_refused(tmp_path, key):
    # A validly signed manifest that names "../x" must still be refused before any open.
    manifest = dict(FIELDS, format=bundle.FORMAT, created_at="2024-01-01T00:00:00Z",
                    labels=["a", "b"],
                    head={"embedding_dim": D, "hidden": 32},
                    signer=signing.key_id(key.verify_key),
                    files={"model.tflite": {"sha256": "0" * 64, "bytes": 0},
                           "head.npz": {"sha256": "0" * 64, "bytes": 0},
                           "../x": {"sha256": "0" * 64, "bytes": 0}})
    body = bundle.canonical_bytes(manifest)
    (tmp_path / "manifest.json").write_bytes(body + b"\n")
    (tmp_path / "signature").write_bytes(signing.sign(body, key))
    with pytest.raises(bundle.ManifestError, match="unsafe file name"):
        bundle.verify_bundle(tmp_path, [key.verify_key])


@pytest.mark.parametrize("change, match", [
    ({"threshold": 1.5}, "threshold"),
    ({"version": 0}, "version"),
    ({"version": True}, "version"),
    ({"parent_version": 3}, "parent_version"),
    ({"input": {"height": 224}}, "input"),
    ({"files": {}}, "computed"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"created_at": "2024-01-01T00:00:00+02:00"}, "created_at"),
    ({"labels": [{}, {}]}, "labels"),
    ({"metrics": {"auc": float("nan")}}, "not plain JSON"),
    ({"uncertain_logit_band": -0.1}, "uncertain_logit_band"),
    ({"uncertain_logit_band": 10.5}, "uncertain_logit_band"),
    ({"uncertain_logit_band": True}, "uncertain_logit_band"),
    ({"uncertain_logit_band": None}, "uncertain_logit_band"),
    ({"uncertain_band": 0.15}, "format 2 gives the uncertain band as uncertain_logit_band"),
])
def test_write_refuses_bad_fields(tmp_path, key, change, match):
    with pytest.raises(bundle.ManifestError, match=match):
        bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(), {**FIELDS, **change}, key)
    assert not (tmp_path / "b").exists()


def test_write_replaces_existing_bundle_but_not_other_dirs(bdir, key, tmp_path):
    bundle.write_bundle(bdir, b"new model", make_head(1), dict(FIELDS, version=4), key)
    assert bundle.verify_bundle(bdir, [key.verify_key]).version == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp leftovers
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        bundle.write_bundle(precious, MODEL_BYTES, make_head(), FIELDS, key)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_resign_with_coordinator_key(bdir, key, tmp_path):
    # Prepare
    coord = signing.generate_signing_key()
    out = tmp_path / "v1"
    # Execute
    manifest = bundle.resign_bundle(bdir, out, coord, version=1, threshold=0.4)
    b = bundle.verify_bundle(out, [coord.verify_key])
    # Assert
    assert b.version == 1 and b.parent_version is None and b.threshold == 0.4
    assert manifest["origin"]["version"] == 3
    assert manifest["origin"]["signer"] == signing.key_id(key.verify_key)
    assert (out / "model.tflite").read_bytes() == (bdir / "model.tflite").read_bytes()
    assert (out / "head.npz").read_bytes() == (bdir / "head.npz").read_bytes()
    with pytest.raises(bundle.SignatureError):
        bundle.verify_bundle(out, [key.verify_key])


def as_format_1(bdir, key, band, **changes):
    """Rewrite ``bdir`` as a format-1 bundle (probability band), validly signed."""
    manifest = bundle.read_manifest(bdir)
    del manifest["uncertain_logit_band"]
    body = bundle.canonical_bytes({**manifest, "format": 1, "uncertain_band": band, **changes})
    (bdir / "manifest.json").write_bytes(body + b"\n")
    (bdir / "signature").write_bytes(signing.sign(body, key))
    return bdir


def logit(p):
    return np.log(p / (1 - p))


@pytest.mark.parametrize("threshold", [1e-7, 0.05, 0.25, 0.436, 0.5, 0.9])
def test_the_uncertain_band_is_the_same_in_logits_at_any_threshold(tmp_path, key, threshold):
    band = np.log(0.65 / 0.35)
    bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                        {**FIELDS, "threshold": threshold, "uncertain_logit_band": band}, key)

    low, high = bundle.verify_bundle(tmp_path / "b", [key.verify_key]).uncertain_interval

    assert logit(high) - logit(threshold) == pytest.approx(band)
    assert logit(threshold) - logit(low) == pytest.approx(band)
    if threshold == 0.5:
        assert (low, high) == pytest.approx((0.35, 0.65))
    if threshold == 0.25:  # a probability band of 0.15 would start at 0.10
        assert (low, high) == pytest.approx((0.152, 0.382), abs=1e-3)


def test_a_format_1_bundle_keeps_its_probability_band(bdir, key, tmp_path):
    as_format_1(bdir, key, band=0.15, threshold=0.25)

    b = bundle.verify_bundle(bdir, [key.verify_key])

    assert b.manifest["format"] == 1
    assert b.uncertain_interval == pytest.approx((0.10, 0.40))
    assert b.uncertain_logit_band == pytest.approx(logit(0.65), abs=1e-4)  # as around 0.5


def test_resigning_a_format_1_bundle_converts_its_band_to_logits(bdir, key, tmp_path):
    as_format_1(bdir, key, band=0.15, threshold=0.436)  # the shipped bundle's

    manifest = bundle.resign_bundle(bdir, tmp_path / "v1", key, version=1)

    assert manifest["format"] == bundle.FORMAT == 2 and "uncertain_band" not in manifest
    assert manifest["uncertain_logit_band"] == 0.619  # logit(0.65), as written by build
    b = bundle.verify_bundle(tmp_path / "v1", [key.verify_key])
    # +-0.15 around 0.436 was 0.286-0.586; the same band around 0.5, in logits:
    assert b.uncertain_interval == pytest.approx((0.294, 0.589), abs=1e-3)
    overridden = bundle.resign_bundle(bdir, tmp_path / "v2", key, version=2,
                                      uncertain_logit_band=1.0)
    assert overridden["uncertain_logit_band"] == 1.0
    with pytest.raises(bundle.ManifestError, match="not uncertain_band"):
        bundle.resign_bundle(bdir, tmp_path / "v3", key, version=3, uncertain_band=0.15)


@pytest.mark.parametrize("change, match", [
    ({"uncertain_band": None}, "'uncertain_band' must be a number in \\[0, 0.5\\)"),
    ({"uncertain_band": 0.5}, "'uncertain_band' must be a number in \\[0, 0.5\\)"),
    ({"uncertain_band": True}, "'uncertain_band' must be"),
    ({"uncertain_logit_band": 0.619}, "format 1 gives the uncertain band as uncertain_band"),
])
def test_a_bad_format_1_band_is_refused(bdir, key, change, match):
    as_format_1(bdir, key, band=0.15, **change)

    with pytest.raises(bundle.ManifestError, match=match):
        bundle.verify_bundle(bdir, [key.verify_key])


@pytest.mark.parametrize("fmt, match", [(0, "'format' must be one of 1, 2, 3"),
                                        (4, "'format' must be one of 1, 2, 3"),
                                        ("2", "'format' must be one of 1, 2, 3"),
                                        (3, "format 3 is a bundle with a block")])
def test_an_unknown_format_is_refused(bdir, key, fmt, match):
    manifest = bundle.read_manifest(bdir)
    body = bundle.canonical_bytes({**manifest, "format": fmt})
    (bdir / "manifest.json").write_bytes(body + b"\n")
    (bdir / "signature").write_bytes(signing.sign(body, key))

    with pytest.raises(bundle.ManifestError, match=match):
        bundle.verify_bundle(bdir, [key.verify_key])


def test_resign_refuses_tampered_source(bdir, tmp_path):
    flip_middle(bdir / "head.npz")
    with pytest.raises(bundle.IntegrityError):
        bundle.resign_bundle(bdir, tmp_path / "v1", signing.generate_signing_key(), version=1)


def test_pack_unpack_round_trip_and_determinism(bdir, key, tmp_path):
    # Execute
    data = bundle.pack(bdir)
    dest = bundle.unpack(data, tmp_path / "unpacked")
    # Assert
    assert bundle.pack(bdir) == data
    b = bundle.verify_bundle(dest, [key.verify_key])
    assert b.manifest == bundle.read_manifest(bdir)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == sorted(tar.getnames())
        assert all(m.mtime == 0 for m in tar.getmembers())


def _tar_gz(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add(tar)
    return buf.getvalue()


def _add_file(name, data=b"x"):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return add


def _add_link(name, kind, target):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return add


@pytest.mark.parametrize("archive, match", [
    (_tar_gz(_add_file("../evil")), "unsafe path"),
    (_tar_gz(_add_file("/etc/evil")), "unsafe path"),
    (_tar_gz(_add_file("sub/evil")), "unsafe path"),
    (_tar_gz(_add_link("model.tflite", tarfile.SYMTYPE, "/etc/passwd")), "not a regular"),
    (_tar_gz(_add_link("model.tflite", tarfile.LNKTYPE, "manifest.json")), "not a regular"),
    (_tar_gz(_add_link("dev", tarfile.CHRTYPE, "")), "not a regular"),
    (_tar_gz(_add_file("big", b"0" * 5000)), "exceed"),
    (b"not gzip at all", "not gzip"),
])
def test_malicious_archives_refused(tmp_path, archive, match):
    with pytest.raises(bundle.IntegrityError, match=match):
        bundle.unpack(archive, tmp_path / "dest", max_bytes=4096)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "evil").exists()


def test_oversize_archive_refused(bdir, tmp_path):
    data = bundle.pack(bdir)
    with pytest.raises(bundle.IntegrityError, match="limit"):
        bundle.unpack(data, tmp_path / "dest", max_bytes=len(data) - 1)


def test_non_canonical_manifest_refused(bdir, key):
    manifest = bundle.read_manifest(bdir)
    (bdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(bundle.ManifestError, match="canonical"):
        bundle.verify_bundle(bdir, [key.verify_key])
