"""Student tokens: every way a token is accepted, and every way one is refused."""

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.core.settings import Settings
from services.core.tenancy import Student
from services.core.tokens import InvalidToken, TokenVerifier, mint_token

SECRET = "unit-test-secret-long-enough-for-any-hmac-algorithm-0123456789abcdef"  # 68 bytes


def claims(**overrides: object) -> dict[str, Any]:
    return {"sub": "student-1", "exp": int(time.time()) + 600, **overrides}


def hs256(**settings: Any) -> TokenVerifier:
    return TokenVerifier(Settings(GRADECAST_JWT_SECRET=SECRET, **settings))


def refused(verifier: TokenVerifier, token: str, match: str | None = None) -> None:
    with pytest.raises(InvalidToken, match=match):
        verifier.verify(token)


def test_a_minted_token_names_the_student_in_the_default_tenant() -> None:
    assert hs256().verify(mint_token("student-1", SECRET, 600)) == Student("default", "student-1")


def test_the_tenant_claim_names_the_school() -> None:
    token = mint_token("student-1", SECRET, 600, tenant_id="school-a")
    assert hs256().verify(token) == Student("school-a", "student-1")
    custom = jwt.encode(claims(school="school-b"), SECRET, algorithm="HS256")
    assert hs256(GRADECAST_JWT_TENANT_CLAIM="school").verify(custom).tenant_id == "school-b"


def test_expiry_allows_the_configured_clock_skew_and_no_more() -> None:
    late = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert hs256(GRADECAST_JWT_LEEWAY_SECONDS=30).verify(late).student_id == "student-1"
    refused(hs256(GRADECAST_JWT_LEEWAY_SECONDS=0), late, "expired")


@pytest.mark.parametrize(
    ("token", "match"),
    [
        (jwt.encode({"sub": "student-1"}, SECRET, algorithm="HS256"), "exp"),
        (jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789abcdef"), "Signature"),
        (jwt.encode(claims(), None, algorithm="none"), "not allowed"),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), "not allowed"),
        (jwt.encode(claims(sub="a/b"), SECRET, algorithm="HS256"), "sub"),
        (jwt.encode(claims(tenant="../x"), SECRET, algorithm="HS256"), "tenant"),
        (jwt.encode(claims(tenant=7), SECRET, algorithm="HS256"), "tenant"),
        ("not-a-token", "segments"),
    ],
    ids=[
        "no exp",
        "tampered",
        "alg none",
        "HS512",
        "bad sub",
        "bad tenant",
        "tenant not text",
        "garbage",
    ],
)
def test_refused_hs256_tokens(token: str, match: str) -> None:
    refused(hs256(), token, match)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = hs256(GRADECAST_JWT_AUDIENCE="gradecast", GRADECAST_JWT_ISSUER="https://idp")
    good = claims(aud="gradecast", iss="https://idp")
    assert verifier.verify(jwt.encode(good, SECRET, algorithm="HS256")).student_id == "student-1"
    for wrong in ({**good, "aud": "other"}, {**good, "iss": "https://evil"}):
        refused(verifier, jwt.encode(wrong, SECRET, algorithm="HS256"))
    without_aud = {k: v for k, v in good.items() if k != "aud"}
    refused(verifier, jwt.encode(without_aud, SECRET, algorithm="HS256"), "aud")
    # Not configured: not checked.
    assert hs256().verify(jwt.encode(good, SECRET, algorithm="HS256")).student_id == "student-1"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """A JWT built by hand: PyJWT itself refuses to sign with a public key as the secret."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rs256_with_a_public_key_file_and_no_algorithm_confusion(tmp_path: Path) -> None:
    private = rsa_key()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(public_pem)
    verifier = TokenVerifier(Settings(GRADECAST_JWT_PUBLIC_KEY_FILE=tmp_path / "idp.pem"))
    assert (
        verifier.verify(jwt.encode(claims(), private, algorithm="RS256")).student_id == "student-1"
    )
    refused(verifier, jwt.encode(claims(), rsa_key(), algorithm="RS256"), "Signature")
    # The classic confusion: HS256 "signed" with the public key as the secret.
    forged = hmac_signed({"alg": "HS256", "typ": "JWT"}, claims(), public_pem)
    refused(verifier, forged, "not allowed")


def test_es256_with_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]})
    )
    verifier = TokenVerifier(Settings(GRADECAST_JWKS_FILE=tmp_path / "jwks.json"))
    token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})
    assert verifier.verify(token).student_id == "student-1"
    unknown = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k2"})
    refused(verifier, unknown, "k2")


def test_a_verifier_without_any_key_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRADECAST_JWT_SECRET", "GRADECAST_JWT_PUBLIC_KEY_FILE", "GRADECAST_JWKS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="GRADECAST_JWT_SECRET"):
        TokenVerifier(Settings())
