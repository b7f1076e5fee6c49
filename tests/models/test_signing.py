"""Ed25519 key files and detached signatures."""
import stat

import pytest

from models.core import signing


@pytest.fixture
def key():
    return signing.generate_signing_key()


def test_sign_verify_round_trip_returns_key_id(key):
    # Prepare
    data = b"canonical manifest bytes"
    # Execute
    sig = signing.sign(data, key)
    got = signing.verify(data, sig, [key.verify_key])
    # Assert
    assert len(sig) == 64
    assert got == signing.key_id(key.verify_key)
    assert len(got) == 16 and int(got, 16) >= 0


def test_verify_picks_the_matching_key_among_several(key):
    other = signing.generate_signing_key()
    sig = signing.sign(b"x", key)
    assert signing.verify(b"x", sig, [other.verify_key, key.verify_key]) == signing.key_id(
        key.verify_key)


def test_wrong_key_refused(key):
    sig = signing.sign(b"data", key)
    with pytest.raises(signing.SignatureError, match="trusted key"):
        signing.verify(b"data", sig, [signing.generate_signing_key().verify_key])


@pytest.mark.parametrize("data, sig_mutation", [
    (b"datA", lambda s: s),                              # message altered
    (b"data", lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:]),  # signature altered
    (b"data", lambda s: s[:-1]),                         # truncated signature
])
def test_tampering_refused(key, data, sig_mutation):
    sig = sig_mutation(signing.sign(b"data", key))
    with pytest.raises(signing.SignatureError):
        signing.verify(data, sig, [key.verify_key])


def test_no_trusted_keys_refused(key):
    with pytest.raises(signing.SignatureError, match="no trusted"):
        signing.verify(b"d", signing.sign(b"d", key), [])


def test_signature_error_is_a_value_error():
    assert issubclass(signing.SignatureError, ValueError)


def test_key_file_round_trip_mode_0600_and_public_key(tmp_path, key):
    # Prepare
    path = tmp_path / "coord.key"
    # Execute
    pub_path = signing.save_signing_key(key, path)
    loaded = signing.load_signing_key(path)
    # Assert
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pub_path == tmp_path / "coord.key.pub"
    assert bytes(loaded) == bytes(key)
    assert len(pub_path.read_text().strip().splitlines()) == 1
    assert bytes(signing.load_public_key(pub_path)) == bytes(key.verify_key)
    assert bytes(signing.load_public_key(str(pub_path))) == bytes(key.verify_key)
    assert bytes(signing.load_public_key(pub_path.read_text())) == bytes(key.verify_key)


def test_no_silent_overwrite(tmp_path, key):
    # Prepare
    path = tmp_path / "k.key"
    signing.save_signing_key(key, path)
    before = path.read_bytes()
    # Execute / Assert
    with pytest.raises(FileExistsError, match="overwrite"):
        signing.save_signing_key(signing.generate_signing_key(), path)
    assert path.read_bytes() == before


def test_existing_public_key_alone_also_blocks(tmp_path, key):
    path = tmp_path / "k.key"
    (tmp_path / "k.key.pub").write_text("stale\n")
    with pytest.raises(FileExistsError):
        signing.save_signing_key(key, path)
    assert not path.exists()


def test_overwrite_true_replaces_and_keeps_0600(tmp_path, key):
    path = tmp_path / "k.key"
    signing.save_signing_key(key, path)
    new = signing.generate_signing_key()
    signing.save_signing_key(new, path, overwrite=True)
    assert bytes(signing.load_signing_key(path)) == bytes(new)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(signing.load_public_key(tmp_path / "k.key.pub")) == bytes(new.verify_key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.key.pub"]


def test_malformed_key_files_refused(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(signing.KeyFormatError):
        signing.load_signing_key(bad)
    with pytest.raises(signing.KeyFormatError):
        signing.load_public_key(bad)
    with pytest.raises(signing.KeyFormatError):
        signing.load_public_key("zz" * 32)


def test_key_id_is_stable_and_distinct(key):
    other = signing.generate_signing_key()
    assert signing.key_id(key.verify_key) == signing.key_id(key.verify_key)
    assert signing.key_id(key.verify_key) != signing.key_id(other.verify_key)
