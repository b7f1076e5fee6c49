"""Credentials for a Flower federation (used for real by ``tests/e2e/test_flower.py``:
the SuperLink serves TLS with them and admits only the registered SuperNode keys)."""
from __future__ import annotations

import ipaddress
import stat

import pytest

pytest.importorskip("flwr")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from coordinator.flower_credentials import make_credentials  # noqa: E402


def test_the_superlink_certificate_is_signed_by_the_ca_for_its_hosts(tmp_path):
    creds = make_credentials(tmp_path, ["127.0.0.1", "link.example.org"], 2)

    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Private keys are readable by their owner only; public node keys are OpenSSH lines.
    for private in (creds.server_key, *creds.node_keys):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    for key in creds.node_keys:
        public = key.with_name(key.name + ".pub").read_bytes()
        assert public.startswith(b"ecdsa-sha2-nistp384 ")
        loaded = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        assert loaded.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) == \
            public.strip()
