"""Student tokens: HS256 JWTs whose sub is the student id."""

import time

import jwt
import pytest

from services.core.tokens import InvalidToken, mint_token, verify_token

SECRET = "unit-test-secret-long-enough-for-any-hmac-algorithm-0123456789abcdef"  # 68 bytes


def claims(**overrides: object) -> dict[str, object]:
    return {"sub": "student-1", "exp": int(time.time()) + 600, **overrides}


def test_mint_then_verify_gives_the_student_id() -> None:
    assert verify_token(mint_token("student-1", SECRET, 600), SECRET) == "student-1"


def test_expired_token_is_refused() -> None:
    with pytest.raises(InvalidToken):
        verify_token(mint_token("student-1", SECRET, -10), SECRET)


def test_token_without_exp_is_refused() -> None:
    token = jwt.encode({"sub": "student-1"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="exp"):
        verify_token(token, SECRET)


def test_wrong_secret_is_refused() -> None:
    token = mint_token("student-1", "another-secret-that-is-also-long-enough-0123456789", 600)
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)


def test_sub_that_is_not_a_string_is_refused() -> None:
    token = jwt.encode(claims(sub=123), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)
