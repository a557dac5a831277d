"""Certificates, keys, the admin token and kubeconfigs of a throwaway cluster.

Uses the openssl command line (present wherever Python is) and ECDSA P-256 keys, which
take milliseconds to generate. Nothing here is meant to protect anything: the cluster
listens on 127.0.0.1 and lives for one test session.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

ADMIN_USER = "qwenft-admin"
SERVICE_IP = "10.0.0.1"
SAN = ",".join(
    [
        "IP:127.0.0.1",
        f"IP:{SERVICE_IP}",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated material, and the admin bearer token."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sa_key: Path
    sa_pub: Path
    token_file: Path
    token: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )


def write_pki(directory: Path) -> Pki:
    """Create a CA, a serving certificate for 127.0.0.1, a service-account key pair and a token."""
    directory.mkdir(parents=True, exist_ok=True)
    p = Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "apiserver.crt",
        server_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        token_file=directory / "tokens.csv",
        token=secrets.token_hex(24),
    )
    for key in (p.ca_key, p.server_key, p.sa_key):
        _ec_key(key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(p.ca_key),
        "-out",
        str(p.ca_cert),
        "-days",
        "30",
        "-subj",
        "/CN=qwenft-dev-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    csr = directory / "apiserver.csr"
    _openssl(
        "req", "-new", "-key", str(p.server_key), "-out", str(csr), "-subj", "/CN=kube-apiserver"
    )
    ext = directory / "apiserver.ext"
    ext.write_text(
        f"subjectAltName={SAN}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(p.ca_cert),
        "-CAkey",
        str(p.ca_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        str(ext),
        "-out",
        str(p.server_cert),
    )
    _openssl("pkey", "-in", str(p.sa_key), "-pubout", "-out", str(p.sa_pub))
    # token,user,uid,"groups": the admin is in system:masters, which RBAC always allows.
    p.token_file.write_text(f'{p.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    return p


def write_kubeconfig(path: Path, *, server: str, pki: Pki, context: str = "qwenft-dev") -> Path:
    """Write a kubeconfig (JSON, which is YAML) for the admin token, with the CA embedded."""
    ca_data = base64.b64encode(pki.ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": context, "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": pki.token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": ADMIN_USER}}],
        "current-context": context,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def write_serving_cert(
    directory: Path, *, ca_cert: Path, ca_key: Path, common_name: str, san: str = "IP:127.0.0.1"
) -> tuple[Path, Path]:
    """Issue a serving certificate from the cluster CA, as `tls.crt` / `tls.key` in directory.

    For local webhook servers (Kueue's manager) that the API server calls at 127.0.0.1: it
    trusts them through the same CA, given as the webhook configurations' caBundle.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr, ext = (directory / n for n in ("tls.crt", "tls.key", "tls.csr", "tls.ext"))
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
    ext.write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key
