"""JWTs through a real `tuneserve api`: a JWKS file written here, tokens signed here with
PyJWT by generated RSA/EC keys, sent by the real client as `authorization: Bearer`.

The token's tenant claim is the namespace the caller acts in, its roles claim what it may do;
expired, wrongly-signed and wrong-audience tokens are UNAUTHENTICATED; a rotated JWKS file is
picked up by the running process; API keys keep working beside JWTs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest
from conftest import Cluster, banking77
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pki import new_key

from tuneserve_client import Client, TuneserveError

ISSUER, AUDIENCE = "https://idp.example.test/", "tuneserve"


def public_jwk(key, kid: str) -> dict:
    algo = ECAlgorithm if kid.startswith("ec") else RSAAlgorithm
    return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid}


def write_jwks(path: Path, *keys: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"keys": list(keys)}))
    os.replace(tmp, path)  # as a mounted Secret changes: atomically


def token(key, kid: str, *, tenant: str = "teama", roles=("train", "predict"), **over) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-17", "iat": now, "exp": now + 600}
    claims.update({"org": {"tenant": tenant}, "scope_roles": list(roles)}, **over)
    alg = "ES256" if kid.startswith("ec") else "RS256"
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def code_of(call) -> str:
    with pytest.raises(TuneserveError) as info:
        call()
    return info.value.code.name


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory):
    """An API process that takes JWTs from a JWKS file (RSA + EC key), and a worker."""
    root = tmp_path_factory.mktemp("jwt")
    rsa, ec = new_key("rsa"), new_key("ec")
    jwks = root / "jwks.json"
    write_jwks(jwks, public_jwk(rsa, "rsa-1"), public_jwk(ec, "ec-1"))
    cluster = Cluster(
        root / "data",
        root,
        jwt_jwks=jwks,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_tenant_claim="org.tenant",  # a dotted path into a nested claim
        jwt_roles_claim="scope_roles",
    )
    try:
        yield cluster, jwks, rsa, ec
    finally:
        cluster.close()


def client(cluster: Cluster, credential: str, namespace: str = "") -> Client:
    return Client(cluster.api.target, api_key=credential, namespace=namespace, timeout=60)


def test_a_token_acts_in_its_tenant_with_its_roles(idp) -> None:
    cluster, _, rsa, ec = idp
    rows = banking77("train", per_label=8)
    with client(cluster, token(rsa, "rsa-1")) as a:
        job = a.train("jwt-intents", rows, epochs=1, request_id="jwt-a-1")
        assert job.namespace == "teama"  # from the token, not from the request
        done = a.wait(job.id, timeout=600)
        assert done.state == "SUCCEEDED", done
        [prediction] = a.predict("jwt-intents", ["my card has not arrived yet"])
        assert prediction.label in {label for _, label in rows}
        assert [j.id for j in a.list_jobs()] == [job.id]
    # The EC key of the same JWKS signs for another tenant, which sees nothing of team A's.
    with client(cluster, token(ec, "ec-1", tenant="teamb")) as b:
        assert list(b.list_jobs()) == []
        assert code_of(lambda: b.get_job(job.id)) == "NOT_FOUND"
        assert code_of(lambda: b.predict("jwt-intents", ["hello"])) == "NOT_FOUND"
    with client(cluster, token(ec, "ec-1", tenant="teamb"), namespace="teama") as b_into_a:
        assert code_of(lambda: list(b_into_a.list_jobs())) == "PERMISSION_DENIED"
    # The admin API key of the fixture sees team A's job: keys and tokens live side by side.
    with Client(cluster.api.target, api_key=cluster.api.api_key, namespace="teama", timeout=30) as admin:
        assert [j.id for j in admin.list_jobs()] == [job.id]


def test_roles_come_from_the_token(idp) -> None:
    cluster, _, rsa, _ = idp
    with client(cluster, token(rsa, "rsa-1", roles=("predict",))) as reader:
        assert code_of(lambda: reader.train("nope", banking77("train", per_label=4))) == "PERMISSION_DENIED"
        assert code_of(lambda: reader.predict("no-such-adapter", ["hi"])) == "NOT_FOUND"  # allowed, absent
    with client(cluster, token(rsa, "rsa-1", roles=())) as nobody:
        assert code_of(lambda: list(nobody.list_adapters())) == "PERMISSION_DENIED"


def test_bad_tokens_are_unauthenticated_and_audited(idp) -> None:
    cluster, _, rsa, _ = idp
    stranger = new_key("rsa")
    now = int(time.time())
    bad = {
        "expired": token(rsa, "rsa-1", exp=now - 120, iat=now - 900),
        "wrong audience": token(rsa, "rsa-1", aud="someone-else"),
        "wrong issuer": token(rsa, "rsa-1", iss="https://evil.example.test/"),
        "signed by another key": token(stranger, "rsa-1"),
        "unknown kid": token(rsa, "rsa-9"),
        "no tenant claim": token(rsa, "rsa-1", org={}),
    }
    for what, credential in bad.items():
        with client(cluster, credential) as c:
            assert code_of(lambda c=c: list(c.list_jobs())) == "UNAUTHENTICATED", what
    log = cluster.api.log()
    assert log.count("auth.failed") >= len(bad)
    assert bad["expired"] not in log  # a token is a secret: never logged


def test_a_rotated_jwks_file_is_picked_up_by_the_running_process(idp) -> None:
    cluster, jwks, rsa, ec = idp
    pid = cluster.api.proc.pid
    new = new_key("rsa")
    with client(cluster, token(new, "rsa-2")) as c:
        assert code_of(lambda: list(c.list_jobs())) == "UNAUTHENTICATED"
    write_jwks(jwks, public_jwk(new, "rsa-2"), public_jwk(ec, "ec-1"))  # rsa-1 retired
    deadline = time.monotonic() + 30
    while True:  # the file is re-read when its mtime changes (allow for mtime granularity)
        try:
            with client(cluster, token(new, "rsa-2")) as c:
                list(c.list_jobs())
            break
        except TuneserveError as exc:
            assert exc.code.name == "UNAUTHENTICATED" and time.monotonic() < deadline, exc
            time.sleep(0.3)
            os.utime(jwks)
    with client(cluster, token(rsa, "rsa-1")) as old:
        assert code_of(lambda: list(old.list_jobs())) == "UNAUTHENTICATED"
    assert cluster.api.proc.pid == pid and cluster.api.proc.poll() is None
