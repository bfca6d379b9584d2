"""Settings read from the environment."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.settings import Settings

DEFAULTS = {
    "PORT": None,
    "RETENTION_HOURS": 24.0,
    "HEARTBEAT_SECONDS": 15.0,
    "MAX_CONNECTIONS_PER_STUDENT": 3,
    "BROKER_SHARDS": 64,
}


def test_publisher_keys_are_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADECAST_PUBLISHER_KEYS", "a, b,,c")
    keys = Settings().GRADECAST_PUBLISHER_KEYS
    assert [key.get_secret_value() for key in keys] == ["a", "b", "c"]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name
        assert type(getattr(settings, name)) is type(value), name


@pytest.mark.parametrize(
    ("name", "value"),
    [("HEARTBEAT_SECONDS", "-1"), ("BROKER_SHARDS", "0"), ("NODE_ID", "bad id")],
)
def test_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_require_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADECAST_JWT_SECRET", raising=False)
    with pytest.raises(SystemExit, match="GRADECAST_JWT_SECRET"):
        Settings().require("DATABASE_URL", "GRADECAST_JWT_SECRET")


def test_require_treats_an_empty_value_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADECAST_JWT_SECRET", "")
    monkeypatch.setenv("GRADECAST_PUBLISHER_KEYS", " , ")
    with pytest.raises(SystemExit, match="GRADECAST_JWT_SECRET, GRADECAST_PUBLISHER_KEYS"):
        Settings().require("GRADECAST_JWT_SECRET", "GRADECAST_PUBLISHER_KEYS")


def test_require_passes_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADECAST_JWT_SECRET", "a-secret")
    Settings().require("DATABASE_URL", "GRADECAST_JWT_SECRET")


def test_secrets_can_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADECAST_JWT_SECRET", raising=False)
    monkeypatch.delenv("GRADECAST_PUBLISHER_KEYS", raising=False)
    (tmp_path / "jwt").write_text("secret-from-a-file\n")
    (tmp_path / "keys").write_text("k1,k2")
    monkeypatch.setenv("GRADECAST_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("GRADECAST_PUBLISHER_KEYS_FILE", str(tmp_path / "keys"))
    settings = Settings()
    assert settings.GRADECAST_JWT_SECRET is not None
    assert settings.GRADECAST_JWT_SECRET.get_secret_value() == "secret-from-a-file"
    assert [k.get_secret_value() for k in settings.GRADECAST_PUBLISHER_KEYS] == ["k1", "k2"]
