"""mtls_tenants parsing, and principal_from_peer on the auth context of a real mTLS handshake:
a grpc server requiring client certificates (CA and certificates generated here) answers with
the principal it derived from the caller's certificate."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from pki import CertificateAuthority

from tuneserve_server.domain.tenancy import Role
from tuneserve_server.services.mtls import parse_mtls_tenants, principal_from_peer


def test_parse_entries_with_roles_and_spaces() -> None:
    mapping = parse_mtls_tenants(" billing-svc=billing:train+predict , ops robot=default:admin,")
    assert mapping == {
        "billing-svc": ("billing", frozenset({Role.TRAIN, Role.PREDICT})),
        "ops robot": ("default", frozenset({Role.ADMIN})),
    }
    assert parse_mtls_tenants("") == {}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("billing-svc", "expected <common name>="),
        ("=billing:train", "expected <common name>="),
        ("svc=billing", "no ':'"),
        ("svc=Billing Team:train", "not a valid namespace"),
        ("svc=billing:", "names no role"),
        ("svc=billing:train+superuser", "unknown role 'superuser'"),
        ("svc=billing:train,svc=other:predict", "listed twice"),
    ],
)
def test_bad_entries_name_the_setting_and_the_entry(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_mtls_tenants(text)
    assert "mtls_tenants" in str(info.value) and why in str(info.value)


def test_unmapped_or_missing_common_name_proves_nothing() -> None:
    mapping = parse_mtls_tenants("svc-a=teama:predict")
    assert principal_from_peer({"x509_common_name": [b"svc-b"]}, mapping) is None
    assert principal_from_peer({"transport_security_type": [b"ssl"]}, mapping) is None
    assert principal_from_peer({}, mapping) is None
    assert principal_from_peer({"x509_common_name": [b"svc-a"]}, {}) is None
    assert principal_from_peer({"x509_common_name": [b"\xff\xfe"]}, mapping) is None


async def _call_over_mtls(tmp_path, mapping) -> dict[str, dict | None]:
    ca, stranger_ca = CertificateAuthority("test CA"), CertificateAuthority("test CA", kind="rsa")
    server_cert, server_key = ca.issue_pem("localhost", server=True)

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        p = principal_from_peer(context.auth_context(), mapping)
        body = (
            None
            if p is None
            else {
                "tenant": p.tenant,
                "roles": sorted(r.value for r in p.roles),
                "key_id": p.key_id,
                "via": p.via,
            }
        )
        return json.dumps(body).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Who", {"Ami": grpc.unary_unary_rpc_method_handler(whoami)}
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [(server_key, server_cert)], root_certificates=ca.pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    answers: dict[str, dict | None] = {}
    try:
        for cn, kind in (("svc-a", "ec"), ("svc-b", "rsa"), ("unmapped", "ec")):
            cert, key = ca.issue_pem(cn, server=False, kind=kind)
            channel_creds = grpc.ssl_channel_credentials(ca.pem, private_key=key, certificate_chain=cert)
            async with grpc.aio.secure_channel(f"localhost:{port}", channel_creds) as channel:
                reply = await channel.unary_unary("/test.Who/Ami")(b"", timeout=10)
                answers[cn] = json.loads(reply)
        # a certificate with a mapped CN from a CA the server does not trust: no handshake
        cert, key = stranger_ca.issue_pem("svc-a", server=False)
        channel_creds = grpc.ssl_channel_credentials(ca.pem, private_key=key, certificate_chain=cert)
        async with grpc.aio.secure_channel(f"localhost:{port}", channel_creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Who/Ami")(b"", timeout=10)
            answers["stranger"] = {"code": info.value.code().name}
    finally:
        await server.stop(None)
    return answers


def test_principal_from_a_real_client_certificate(tmp_path) -> None:
    mapping = parse_mtls_tenants("svc-a=teama:train,svc-b=teamb:predict+admin")
    answers = asyncio.run(_call_over_mtls(tmp_path, mapping))
    assert answers["svc-a"] == {"tenant": "teama", "roles": ["train"], "key_id": "CN=svc-a", "via": "mtls"}
    assert answers["svc-b"] == {
        "tenant": "teamb",
        "roles": ["admin", "predict"],
        "key_id": "CN=svc-b",
        "via": "mtls",
    }
    assert answers["unmapped"] is None
    assert answers["stranger"] == {"code": "UNAVAILABLE"}
