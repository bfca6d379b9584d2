"""Logging for every gradecast process. Tokens in query strings never reach a log line.

LOG_FORMAT=json writes one JSON object per line, with the id of the HTTP request that
logged it (services/web/request_id.py) when there is one."""

import json
import logging
import os
import re
from contextvars import ContextVar
from datetime import UTC, datetime

TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The id of the HTTP request being served, set by RequestIdMiddleware.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_QUERY.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


class AddRequestId(logging.Filter):
    """Puts the current request's id, or None, on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class DroppedStreams(logging.Filter):
    """A stream node leaves the response of a reader that stopped reading unfinished, so
    that the server closes its connection (services/stream/sse.py); uvicorn reports that as
    an error, which here it is not. The node logs the drop itself, as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601, UTC), level, logger, message, request_id
    when the record has one, and error with the traceback when it carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, object] = {
            "time": time.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            # After the handler's filters, so with tokens already redacted.
            "message": record.getMessage(),
        }
        if (rid := getattr(record, "request_id", None)) is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging() -> None:
    # Read here rather than from Settings, which validates it (LOG_FORMAT) when a service
    # loads its settings.
    json_lines = os.environ.get("LOG_FORMAT", "text") == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactTokens())
    handler.addFilter(AddRequestId())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    logging.getLogger("uvicorn.error").addFilter(DroppedStreams())
