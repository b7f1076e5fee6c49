"""Credentials of a Flower federation: a TLS CA, the SuperLink's certificate and one
SuperNode authentication key per Pi (needs the ``flower`` extra's ``cryptography``).

SuperNode authentication needs TLS on the SuperLink (Flower 1.42 refuses
``--enable-supernode-auth`` without it). Keys are ECDSA P-384: private keys in OpenSSH
format for ``flower-supernode --auth-supernode-private-key``, public keys in OpenSSH
format for ``flwr supernode register``. Private keys are written mode 0600.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from models.core.files import write_atomic

VALID_DAYS = 825


@dataclass(frozen=True)
class FlowerCredentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]   # private; the public key is the same path + ".pub"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    return write_atomic(path, data, mode=0o600 if private else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool,
          hosts: list[str] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_credentials(out: Path, hosts: list[str], n_nodes: int) -> FlowerCredentials:
    """A fresh CA, a SuperLink certificate for ``hosts`` and ``n_nodes`` node keys."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert("NeuroEdge Flower CA", ca_key, "NeuroEdge Flower CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = _cert(hosts[0], server_key, "NeuroEdge Flower CA", ca_key, ca=False,
                   hosts=hosts)
    pem = serialization.Encoding.PEM
    nodes = []
    for k in range(n_nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        path = _write(out / f"supernode-{k}", key.private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), True)
        _write(path.with_name(path.name + ".pub"), key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
        nodes.append(path)
    return FlowerCredentials(_write(out / "ca.crt", ca.public_bytes(pem)),
                             _write(out / "superlink.crt", server.public_bytes(pem)),
                             _write(out / "superlink.key", _pem_key(server_key), True),
                             nodes)
