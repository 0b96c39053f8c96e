"""Keys and certificates of a throw-away control plane (generated with `cryptography`).

One CA signs the API server's serving certificate (valid for the loopback address and the
in-cluster names); a separate RSA key signs ServiceAccount tokens. Clients authenticate with
static bearer tokens (see `controlplane`). A real node adds certificates from the same CA
(`node_certificates`): the kubelet's client certificate (`system:node:<name>` in
`system:nodes`, as the Node authorizer expects), its serving certificate for the node address,
and the API server's client certificate for calls to the kubelet (logs, port-forward).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=7)
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    ca_key: Path


@dataclass(frozen=True)
class NodeCertificates:
    """PEM files of a real node: kubelet client and serving pairs, the API server's client
    pair for the kubelet."""

    kubelet_client_cert: Path
    kubelet_client_key: Path
    kubelet_serving_cert: Path
    kubelet_serving_key: Path
    apiserver_kubelet_client_cert: Path
    apiserver_kubelet_client_key: Path


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def random_token() -> str:
    """A bearer token for the static token file (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def generate(folder: Path, ip_addresses: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    """Write a CA, a serving certificate for `ip_addresses`, and a ServiceAccount key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(minutes=5)  # tolerate small clock differences
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("llmstream-controlplane-ca"))
        .issuer_name(_name("llmstream-controlplane-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVING_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca_cert.subject)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Pki(
        ca_cert=_write(folder / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        serving_cert=_write(
            folder / "apiserver.crt", serving_cert.public_bytes(serialization.Encoding.PEM)
        ),
        serving_key=_write(folder / "apiserver.key", _key_pem(serving_key)),
        sa_key=_write(folder / "sa.key", _key_pem(sa_key)),
        sa_pub=_write(folder / "sa.pub", sa_pub),
        ca_key=_write(folder / "ca.key", _key_pem(ca_key)),
    )


def _leaf(
    ca: Pki,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    """A certificate signed by the tier's CA for a fresh key: (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC) - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def node_certificates(ca: Pki, folder: Path, node_name: str, node_ip: str) -> NodeCertificates:
    """Write the certificates a real node needs, all signed by the tier's CA."""
    folder.mkdir(parents=True, exist_ok=True)
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    serving = ExtendedKeyUsageOID.SERVER_AUTH
    pairs = {
        "kubelet-client": _leaf(ca, _name(f"system:node:{node_name}", ("system:nodes",)), client),
        "kubelet-serving": _leaf(
            ca,
            _name(f"system:node:{node_name}", ("system:nodes",)),
            serving,
            [x509.DNSName(node_name), x509.IPAddress(ipaddress.ip_address(node_ip))],
        ),
        # system:masters may proxy to nodes (logs, exec, port-forward) under any authorizer.
        "apiserver-kubelet-client": _leaf(
            ca, _name("kube-apiserver-kubelet-client", ("system:masters",)), client
        ),
    }
    paths = {}
    for stem, (cert, key) in pairs.items():
        paths[stem] = (_write(folder / f"{stem}.crt", cert), _write(folder / f"{stem}.key", key))
    return NodeCertificates(
        kubelet_client_cert=paths["kubelet-client"][0],
        kubelet_client_key=paths["kubelet-client"][1],
        kubelet_serving_cert=paths["kubelet-serving"][0],
        kubelet_serving_key=paths["kubelet-serving"][1],
        apiserver_kubelet_client_cert=paths["apiserver-kubelet-client"][0],
        apiserver_kubelet_client_key=paths["apiserver-kubelet-client"][1],
    )
