"""Student tokens: JWTs whose `sub` is the student id and whose tenant claim names the
school (absent: the default tenant). Signed HS256 with a shared secret, or RS256/ES256 by a
school's identity provider, checked against its public key or key set. `exp` is required;
`aud` and `iss` are checked when configured; `alg: none` and algorithm confusion are refused
because each kind of key accepts only its own algorithms."""

import functools
import re
import time
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm

from services.core.tenancy import DEFAULT_TENANT, Student

if TYPE_CHECKING:  # the load generator mints tokens without the settings layer
    from services.core.settings import Settings

HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]
IDENTIFIER = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


class InvalidToken(Exception):
    pass


class PreparedKeyHMAC(HMACAlgorithm):
    """HMAC with each key prepared once, not on every token: PyJWT checks at each decode
    that the secret is no PEM or JWK document, which costs more than the signature, and
    the keys here are the process's own, never a token's."""

    @functools.lru_cache(maxsize=8)  # noqa: B019 -- one instance, as long as the process
    def prepare_key(self, key: str | bytes) -> bytes:
        return super().prepare_key(key)


jwt.unregister_algorithm("HS256")
jwt.register_algorithm("HS256", PreparedKeyHMAC(HMACAlgorithm.SHA256))


def mint_token(
    student_id: str, secret: str, ttl_seconds: float, tenant_id: str | None = None
) -> str:
    """An HS256 token, for development and tests."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": student_id, "iat": now, "exp": now + int(ttl_seconds)}
    if tenant_id is not None:
        claims["tenant"] = tenant_id
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenVerifier:
    def __init__(self, settings: "Settings") -> None:
        self.jwks: jwt.PyJWKSet | None = None
        self.key: Any = None
        if settings.GRADECAST_JWKS_FILE is not None:
            self.jwks = jwt.PyJWKSet.from_json(settings.GRADECAST_JWKS_FILE.read_text())
            self.algorithms = PUBLIC_KEY_ALGORITHMS
        elif settings.GRADECAST_JWT_PUBLIC_KEY_FILE is not None:
            self.key = settings.GRADECAST_JWT_PUBLIC_KEY_FILE.read_text()
            self.algorithms = PUBLIC_KEY_ALGORITHMS
        elif settings.GRADECAST_JWT_SECRET is not None:
            self.key = settings.GRADECAST_JWT_SECRET.get_secret_value()
            self.algorithms = HMAC_ALGORITHMS
        else:
            raise SystemExit(
                "gradecast: set GRADECAST_JWT_SECRET, GRADECAST_JWT_PUBLIC_KEY_FILE "
                "or GRADECAST_JWKS_FILE"
            )
        self.audience = settings.GRADECAST_JWT_AUDIENCE
        self.issuer = settings.GRADECAST_JWT_ISSUER
        self.leeway = settings.GRADECAST_JWT_LEEWAY_SECONDS
        self.tenant_claim = settings.GRADECAST_JWT_TENANT_CLAIM

    def verify(self, token: str) -> Student:
        required = ["exp", "sub"] + ["aud"] * bool(self.audience) + ["iss"] * bool(self.issuer)
        try:
            claims = jwt.decode(
                token,
                self.signing_key(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except (jwt.InvalidTokenError, jwt.PyJWKError) as error:
            raise InvalidToken(str(error)) from error
        subject, tenant = claims["sub"], claims.get(self.tenant_claim, DEFAULT_TENANT)
        for name, value in (("sub", subject), (self.tenant_claim, tenant)):
            if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
                raise InvalidToken(f"the token's {name} is not a valid identifier")
        return Student(tenant, subject)

    def signing_key(self, token: str) -> Any:
        if self.jwks is None:
            return self.key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            return self.jwks[str(kid)].key
        except jwt.InvalidTokenError as error:
            raise InvalidToken(str(error)) from error
        except KeyError:
            raise InvalidToken(f"no key {kid!r} in the key set") from None
