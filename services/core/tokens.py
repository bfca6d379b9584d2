"""Student tokens: JWTs whose `sub` is the student id, HS256, `exp` required."""

import time

import jwt

ALGORITHM = "HS256"


class InvalidToken(Exception):
    pass


def mint_token(student_id: str, secret: str, ttl_seconds: float) -> str:
    now = int(time.time())
    claims = {"sub": student_id, "iat": now, "exp": now + int(ttl_seconds)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> str:
    """The student id the token speaks for."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.InvalidTokenError as error:
        raise InvalidToken(str(error)) from error
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise InvalidToken("the token's sub is not a string")
    return subject
