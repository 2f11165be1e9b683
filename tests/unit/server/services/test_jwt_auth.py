"""JwtVerifier with real tokens: RSA and EC keys generated here, a JWKS file written here,
tokens signed by PyJWT; every way a token can fail, and a rotated JWKS file picked up."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pki import new_key

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import NotReady, Unauthenticated
from tuneserve_server.domain.tenancy import Role
from tuneserve_server.services.jwt_auth import JwtVerifier, looks_like_jwt

ISSUER, AUDIENCE = "https://idp.example.com/", "tuneserve"


def jwk(key, kid: str, alg: str | None = None) -> dict:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    data = json.loads(algo.to_jwk(key.public_key()))
    data["kid"] = kid
    if alg:
        data["alg"] = alg
    return data


def write_jwks(path: Path, *keys: dict) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def claims(**over) -> dict:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-17",
        "iat": now,
        "exp": now + 600,
        "tenant": "teama",
        "roles": ["train", "predict"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key, kid: str | None, alg: str, **over) -> str:
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def settings(jwks: str, **over) -> Settings:
    values = {
        "jwt_jwks": jwks,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_tenant_claim": "tenant",
        "jwt_roles_claim": "roles",
    }
    values.update(over)
    return Settings(**values)


@pytest.fixture(scope="module")
def rsa_key():
    return new_key("rsa")


@pytest.fixture(scope="module")
def ec_key():
    return new_key("ec")


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key, ec_key) -> Path:
    return write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "rsa-1"), jwk(ec_key, "ec-1"))


def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.principal(token)
    return str(info.value)


def test_valid_rsa_and_ec_tokens_give_the_tenant_and_roles(jwks_file: Path, rsa_key, ec_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    for key, kid, alg in (
        (rsa_key, "rsa-1", "RS256"),
        (rsa_key, "rsa-1", "PS256"),
        (ec_key, "ec-1", "ES256"),
    ):
        principal = verifier.principal(sign(key, kid, alg))
        assert principal is not None, alg
        assert principal.tenant == "teama" and principal.via == "jwt" and principal.key_id == "user-17"
        assert principal.roles == frozenset({Role.TRAIN, Role.PREDICT})


def test_an_api_key_is_not_a_jwt_and_falls_through(jwks_file: Path) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    for token in ("tsk_abc123.secretpart", "plainkey", "a.b.c", "", "x.y"):
        assert not looks_like_jwt(token)
        assert verifier.principal(token) is None


def test_expired_wrong_audience_wrong_issuer_are_refused(jwks_file: Path, rsa_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    hour_ago = int(time.time()) - 3600
    assert "expired" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", exp=hour_ago, iat=hour_ago - 60))
    assert "audience" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", aud="someone-else"))
    assert "claim 'aud'" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", aud=None))
    assert "issuer" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", iss="https://evil.example/"))
    assert "'exp'" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", exp=None))


def test_issuer_and_audience_are_not_checked_when_not_set(jwks_file: Path, rsa_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file), jwt_issuer="", jwt_audience=""))
    principal = verifier.principal(sign(rsa_key, "rsa-1", "RS256", aud="anything", iss="anyone"))
    assert principal is not None and principal.tenant == "teama"


def test_a_token_signed_by_another_key_or_with_an_unknown_kid_is_refused(jwks_file: Path, rsa_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    stranger = new_key("rsa")
    assert "signature" in refused(verifier, sign(stranger, "rsa-1", "RS256"))  # kid of a known key
    assert "unknown key id 'rsa-9'" in refused(verifier, sign(stranger, "rsa-9", "RS256"))
    # two keys in the set: a token without kid cannot pick one
    assert "kid" in refused(verifier, sign(rsa_key, None, "RS256"))


def test_algorithm_confusion_and_none_are_refused(jwks_file: Path, rsa_key, ec_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    # HS256 with the RSA public key as the HMAC secret: the classic confusion attack
    public_pem = jwk(rsa_key, "rsa-1")["n"].encode()
    forged = jwt.encode(claims(), public_pem, algorithm="HS256", headers={"kid": "rsa-1"})
    assert "not accepted" in refused(verifier, forged)
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert "not accepted" in refused(verifier, unsigned)
    # an EC key's kid with an RSA algorithm
    assert "not accepted" in refused(verifier, sign(rsa_key, "ec-1", "RS256"))


def test_tenant_claim_is_required_and_must_be_a_namespace(jwks_file: Path, rsa_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    assert "tenant claim 'tenant'" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", tenant=None))
    assert "tenant claim" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", tenant=""))
    assert "not a valid namespace" in refused(verifier, sign(rsa_key, "rsa-1", "RS256", tenant="Team A/../b"))


def test_roles_as_a_string_a_nested_claim_and_unknown_names_ignored(jwks_file: Path, rsa_key) -> None:
    verifier = JwtVerifier(settings(str(jwks_file)))
    p = verifier.principal(sign(rsa_key, "rsa-1", "RS256", roles="predict offline_access"))
    assert p is not None and p.roles == frozenset({Role.PREDICT})  # offline_access ignored
    p = verifier.principal(sign(rsa_key, "rsa-1", "RS256", roles=["uma_authorization"]))
    assert p is not None and p.roles == frozenset() and not p.has(Role.PREDICT)  # authenticated, no role
    p = verifier.principal(sign(rsa_key, "rsa-1", "RS256", roles=None))
    assert p is not None and p.roles == frozenset()

    nested = JwtVerifier(
        settings(str(jwks_file), jwt_tenant_claim="org", jwt_roles_claim="realm_access.roles")
    )
    token = sign(rsa_key, "rsa-1", "RS256", tenant=None, org="teamb", realm_access={"roles": ["admin"]})
    p = nested.principal(token)
    assert p is not None and p.tenant == "teamb" and p.roles == frozenset({Role.ADMIN})
    # no sub: the jti names the credential
    p = verifier.principal(sign(rsa_key, "rsa-1", "RS256", sub=None, jti="tok-5"))
    assert p is not None and p.key_id == "tok-5"


def test_a_rotated_jwks_file_is_picked_up_without_a_restart(tmp_path: Path, rsa_key) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "old"))
    verifier = JwtVerifier(settings(str(path)))
    assert verifier.principal(sign(rsa_key, "old", "RS256")) is not None
    new = new_key("ec")
    assert "unknown key id 'new'" in refused(verifier, sign(new, "new", "ES256"))

    write_jwks(path, jwk(new, "new"))  # the old key retired, the new one published
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime, surely
    assert verifier.principal(sign(new, "new", "ES256")) is not None
    assert "unknown key id 'old'" in refused(verifier, sign(rsa_key, "old", "RS256"))
    # one key in the set: a token without kid uses it
    assert verifier.principal(sign(new, None, "ES256")) is not None

    path.write_text("{ half written")  # a broken rotation keeps the last good set
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert verifier.principal(sign(new, "new", "ES256")) is not None


def test_a_jwks_declared_alg_is_the_only_one_accepted(tmp_path: Path, rsa_key) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "k", alg="PS256"))
    verifier = JwtVerifier(settings(str(path)))
    assert verifier.principal(sign(rsa_key, "k", "PS256")) is not None
    assert "not accepted" in refused(verifier, sign(rsa_key, "k", "RS256"))


def test_jwks_configuration_errors(tmp_path: Path, rsa_key) -> None:
    with pytest.raises(ValueError, match="jwt_jwks"):
        JwtVerifier(settings("http://idp.example.com/jwks"))
    off = JwtVerifier(settings(""))
    assert not off.enabled
    assert off.principal("not-a-jwt") is None
    assert "jwt_jwks is not set" in refused(off, sign(rsa_key, "k", "RS256"))
    missing = JwtVerifier(settings(str(tmp_path / "absent.json")))
    with pytest.raises(NotReady, match=r"absent\.json"):
        missing.principal(sign(rsa_key, "k", "RS256"))
