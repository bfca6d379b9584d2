"""Tokens in query strings are redacted before a log line is written."""

import logging

from services.logs import RedactTokens


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, msg, args, None)


def test_token_values_are_redacted() -> None:
    entry = record(
        '%s - "%s %s" %d',
        "127.0.0.1",
        "GET",
        "/notifications/stream/s1?token=eyJ.abc.def&lastEventId=4",
        200,
    )
    assert RedactTokens().filter(entry) is True
    assert entry.args == (
        "127.0.0.1",
        "GET",
        "/notifications/stream/s1?token=[redacted]&lastEventId=4",
        200,
    )


def test_token_after_another_parameter_is_redacted() -> None:
    entry = record("%s", "/stream/s1?lastEventId=4&token=secret.value&x=1")
    RedactTokens().filter(entry)
    assert entry.getMessage() == "/stream/s1?lastEventId=4&token=[redacted]&x=1"


def test_other_parameters_are_kept() -> None:
    entry = record("%s", "/stream/s1?lastEventId=4&tokens=1&mytoken=2")
    RedactTokens().filter(entry)
    assert entry.getMessage() == "/stream/s1?lastEventId=4&tokens=1&mytoken=2"
