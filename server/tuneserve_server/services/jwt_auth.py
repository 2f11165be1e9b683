"""JWT bearer tokens verified against a JWKS (issue #12): for deployments that already run an
identity provider. The crypto is PyJWT's (with `cryptography`); this module only decides which
keys and algorithms are acceptable and how claims become a Principal.

* The JWKS is `jwt_jwks`: a file (re-read when its mtime or size changes, so rotating the
  keys is writing the file) or an https URL (PyJWKClient, cached for JWKS_CACHE_S, refetched
  at once when a token names a key id it has not seen).
* Only asymmetric algorithms are accepted (RS*, PS*, ES*, EdDSA), and only the ones that fit
  the key the token's `kid` selects: never HS* (a public key used as an HMAC secret) or none.
* `exp` is required; `iss` / `aud` are checked when jwt_issuer / jwt_audience are set.
  LEEWAY_S of clock skew is allowed.
* The tenant is the `jwt_tenant_claim` claim (a valid namespace name; required). Roles are the
  `jwt_roles_claim` claim, a list or a space-separated string. Role names tuneserve does not
  know (an identity provider's `offline_access`, another application's roles) are IGNORED:
  they can only ever grant nothing. A token with no known role (or no roles claim) still
  authenticates; every RPC that needs a role then answers PERMISSION_DENIED. Claim names may
  be dotted paths into nested objects (`realm_access.roles`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from tuneserve_server.domain.errors import NotReady, Unauthenticated
from tuneserve_server.domain.naming import is_valid_name
from tuneserve_server.domain.tenancy import Principal, Role

LEEWAY_S = 30.0
JWKS_CACHE_S = 300
JWKS_FETCH_TIMEOUT_S = 5.0

_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",), "secp256k1": ("ES256K",)}
ALLOWED_ALGORITHMS = frozenset((*_RSA, *(a for algs in _EC.values() for a in algs), "EdDSA"))
_ROLE_NAMES = {r.value: r for r in Role}


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments whose first is a JSON header naming an `alg`."""
    if token.count(".") != 2:
        return False
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return isinstance(header, dict) and "alg" in header


def _algorithms_for(key: PyJWK) -> list[str]:
    """The algorithms a token signed with `key` may use."""
    declared = key._jwk_data.get("alg")  # PyJWK keeps the JWK it was built from
    if declared:
        return [declared] if declared in ALLOWED_ALGORITHMS else []
    kty = key.key_type
    if kty == "RSA":
        return list(_RSA)
    if kty == "EC":
        return list(_EC.get(key._jwk_data.get("crv", ""), ()))
    if kty == "OKP":
        return ["EdDSA"]
    return []  # "oct": symmetric keys are never accepted


def _claim(payload: dict[str, Any], name: str) -> Any:
    if name in payload:
        return payload[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class _FileKeys:
    """A JWKS file, parsed again whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[PyJWK] = []

    def _load(self) -> list[PyJWK]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise NotReady(f"jwt_jwks file {self.path} cannot be read: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    data = json.loads(self.path.read_text())
                    self._keys = list(PyJWKSet.from_dict(data).keys)
                except (OSError, ValueError, jwt.PyJWTError) as exc:
                    # keep serving the last good set while a rotation is half-written
                    if not self._keys:
                        raise NotReady(f"jwt_jwks file {self.path} is not a valid JWKS: {exc}") from None
                    return self._keys
                self._stamp = stamp
            return self._keys

    def key_for(self, kid: str | None) -> PyJWK:
        keys = self._load()
        if kid is None:
            if len(keys) == 1:
                return keys[0]
            raise Unauthenticated("JWT has no key id (kid) and the JWKS holds more than one key")
        for key in keys:
            if key.key_id == kid:
                return key
        raise Unauthenticated(f"JWT signed with unknown key id {kid!r}")


class _UrlKeys:
    """A JWKS at an https URL, through PyJWKClient's cache."""

    def __init__(self, url: str) -> None:
        self.client = PyJWKClient(
            url, cache_jwk_set=True, lifespan=JWKS_CACHE_S, timeout=JWKS_FETCH_TIMEOUT_S
        )

    def key_for(self, kid: str | None) -> PyJWK:
        try:
            if kid is None:
                keys = self.client.get_signing_keys()
                if len(keys) == 1:
                    return keys[0]
                raise Unauthenticated("JWT has no key id (kid) and the JWKS holds more than one key")
            return self.client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise NotReady(f"cannot fetch the JWKS: {exc}") from None
        except jwt.PyJWKClientError as exc:
            # PyJWKClient refetched once before giving up on the kid
            raise Unauthenticated(f"JWT signed with unknown key id {kid!r} ({exc})") from None


class JwtVerifier:
    """`principal(token)`: None for a token that is not a JWT (an API key), a Principal for a
    valid one; Unauthenticated (with the reason) for a JWT that fails any check."""

    def __init__(self, settings: Any) -> None:
        self.issuer: str = settings.jwt_issuer
        self.audience: str = settings.jwt_audience
        self.tenant_claim: str = settings.jwt_tenant_claim
        self.roles_claim: str = settings.jwt_roles_claim
        source: str = settings.jwt_jwks
        self._keys: _FileKeys | _UrlKeys | None
        if not source:
            self._keys = None
        elif source.startswith("https://"):
            self._keys = _UrlKeys(source)
        elif "://" in source:
            raise ValueError(f"setting jwt_jwks: {source!r} must be a file path or an https:// URL")
        else:
            self._keys = _FileKeys(Path(source))

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def principal(self, token: str) -> Principal | None:
        if not looks_like_jwt(token):
            return None
        if self._keys is None:
            raise Unauthenticated("JWTs are not accepted by this server (jwt_jwks is not set)")
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("JWT key id (kid) must be a string")
        key = self._keys.key_for(kid)
        algorithms = _algorithms_for(key)
        if header.get("alg") not in algorithms:
            raise Unauthenticated(
                f"JWT algorithm {header.get('alg')!r} is not accepted for key {key.key_id!r}"
                f" (accepted: {', '.join(algorithms) or 'none'})"
            )
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=algorithms,
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"JWT audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"JWT issuer is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("JWT signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"JWT lacks the required claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"JWT is not valid: {exc}") from None

        tenant = _claim(payload, self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"JWT has no tenant claim {self.tenant_claim!r}")
        if not is_valid_name(tenant):
            raise Unauthenticated(
                f"JWT tenant {tenant!r} (claim {self.tenant_claim!r}) is not a valid namespace"
            )
        raw_roles = _claim(payload, self.roles_claim)
        if isinstance(raw_roles, str):
            names = raw_roles.split()
        elif isinstance(raw_roles, list):
            names = [r for r in raw_roles if isinstance(r, str)]
        else:
            names = []
        roles = frozenset(_ROLE_NAMES[n] for n in names if n in _ROLE_NAMES)
        subject = payload.get("sub") or payload.get("jti") or ""
        return Principal(tenant=tenant, roles=roles, key_id=str(subject), via="jwt")
