"""Certificate rotation without a restart, against a real `tuneserve api`: its certificate
files are replaced by ones from a NEW CA while it runs; a new client trusting only the new CA
connects, one trusting only the old CA no longer does, and the process is the same one.
A rotation caught half-way (a key that does not belong to the certificate) keeps the old
certificate in use. With client certificates required, the client CA file rotates too.
Certificates come from tests/pki.py (generated here with `cryptography`)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import grpc
import pytest
from conftest import Proc, free_port
from pki import CertificateAuthority

from tuneserve_client import Client, TuneserveError, tls_credentials


def replace(path: Path, data: bytes) -> None:
    """Write `path` atomically (as a Kubernetes Secret volume or cert-manager does)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def health(target: str, credentials: grpc.ChannelCredentials) -> str:
    """One health call on a NEW channel (a new TLS handshake)."""
    with Client(target, timeout=5, credentials=credentials) as client:
        return client.health()


def wait_serving(proc: Proc, credentials: grpc.ChannelCredentials, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log()[-4000:]
        with contextlib.suppress(TuneserveError):
            if health(proc.target, credentials) == "SERVING":
                return
        time.sleep(0.2)
    raise TimeoutError(f"{proc.target} did not become SERVING:\n{proc.log()[-4000:]}")


def refused(target: str, credentials: grpc.ChannelCredentials) -> str:
    with pytest.raises(TuneserveError) as info:
        health(target, credentials)
    return info.value.code.name


def wait_for(condition, what: str, proc: Proc, timeout: float = 30.0) -> None:
    """Reloading happens at the next handshake; allow for mtime granularity."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{proc.log()[-4000:]}"
        time.sleep(0.2)


def _connects(target: str, credentials: grpc.ChannelCredentials) -> bool:
    try:
        return health(target, credentials) == "SERVING"
    except TuneserveError:
        return False


def test_server_certificate_rotates_to_a_new_ca_without_a_restart(tmp_path: Path) -> None:
    old_ca, new_ca = CertificateAuthority("old CA"), CertificateAuthority("new CA", kind="rsa")
    old_trust, new_trust = old_ca.write(tmp_path / "old-ca.pem"), new_ca.write(tmp_path / "new-ca.pem")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    old_cert, old_key = old_ca.issue_pem("server", server=True)
    cert.write_bytes(old_cert)
    key.write_bytes(old_key)
    api = Proc("api", tmp_path / "data", tmp_path, port=free_port(), tls_cert_file=cert, tls_key_file=key)
    try:
        wait_serving(api, tls_credentials(old_trust))
        pid = api.proc.pid
        assert refused(api.target, tls_credentials(new_trust)) == "UNAVAILABLE"

        # Half a rotation: the new certificate is there, its key not yet. The server keeps
        # the old pair (a mismatched pair would fail every handshake).
        new_cert, new_key = new_ca.issue_pem("server", server=True, kind="rsa")
        replace(cert, new_cert)

        def old_pair_still_served() -> bool:  # each call is a handshake, so a reload attempt
            assert health(api.target, tls_credentials(old_trust)) == "SERVING"
            return "tls_reload_failed" in api.log()

        wait_for(old_pair_still_served, "no tls_reload_failed logged", api)

        replace(key, new_key)  # the rotation completes
        wait_for(lambda: _connects(api.target, tls_credentials(new_trust)), "new CA not served", api)
        assert refused(api.target, tls_credentials(old_trust)) == "UNAVAILABLE"
        assert api.proc.poll() is None and api.proc.pid == pid  # no restart
        assert "tls_reloaded" in api.log()
    finally:
        if api.stop() not in (0, None):
            print(f"--- api log ---\n{api.log()[-4000:]}")


def test_client_ca_rotates_too_with_client_certificates_required(tmp_path: Path) -> None:
    old_ca, new_ca = CertificateAuthority("old CA"), CertificateAuthority("new CA")
    old_trust, new_trust = old_ca.write(tmp_path / "old-ca.pem"), new_ca.write(tmp_path / "new-ca.pem")
    cert, key, client_ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    server_cert, server_key = old_ca.issue_pem("server", server=True)
    cert.write_bytes(server_cert)
    key.write_bytes(server_key)
    client_ca.write_bytes(old_ca.pem)
    old_client = old_ca.issue("old-client", tmp_path, server=False)
    new_client = new_ca.issue("new-client", tmp_path, server=False)
    api = Proc(
        "api",
        tmp_path / "data",
        tmp_path,
        port=free_port(),
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=client_ca,
    )
    try:
        wait_serving(api, tls_credentials(old_trust, *old_client))
        assert refused(api.target, tls_credentials(old_trust, *new_client)) == "UNAVAILABLE"

        # Everything moves to the new CA: the server's certificate and the CA clients need.
        server_cert, server_key = new_ca.issue_pem("server", server=True)
        replace(key, server_key)
        replace(cert, server_cert)
        replace(client_ca, new_ca.pem)
        wait_for(lambda: _connects(api.target, tls_credentials(new_trust, *new_client)), "not rotated", api)
        assert refused(api.target, tls_credentials(new_trust, *old_client)) == "UNAVAILABLE"
        assert refused(api.target, tls_credentials(old_trust, *old_client)) == "UNAVAILABLE"
        assert refused(api.target, tls_credentials(new_trust)) == "UNAVAILABLE"  # no client cert
    finally:
        if api.stop() not in (0, None):
            print(f"--- api log ---\n{api.log()[-4000:]}")
