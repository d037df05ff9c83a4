"""``EnvSettings.from_env`` / ``to_env`` and the checks of ``ServerSettings``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from rlyard import errors
from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings, ServerSettings


@dataclasses.dataclass(frozen=True)
class Demo(EnvSettings):
    """Every kind of field ``from_env`` converts."""

    flag: bool = False
    count: int = 1
    ratio: float = 0.5
    name: str = "x"
    path: Path = Path("rel")
    maybe_port: int | None = None
    maybe_path: Path | None = None
    names: tuple[str, ...] = ("a",)


def test_from_env_parses_every_field_type() -> None:
    demo = Demo.from_env(
        "DEMO",
        {
            "DEMO_FLAG": "yes",
            "DEMO_COUNT": "42",
            "DEMO_RATIO": "2.5e-1",
            "DEMO_NAME": "  spaced  ",
            "DEMO_PATH": "/data/x",
            "DEMO_MAYBE_PORT": "9100",
            "DEMO_MAYBE_PATH": "ready.json",
            "DEMO_NAMES": "b, c,,d ",
        },
    )
    assert demo == Demo(True, 42, 0.25, "  spaced  ", Path("/data/x"), 9100, Path("ready.json"), ("b", "c", "d"))
    assert isinstance(demo.count, int) and isinstance(demo.ratio, float)


def test_unset_variables_keep_defaults_and_other_prefixes_are_ignored() -> None:
    assert Demo.from_env("DEMO", {"OTHER_COUNT": "5", "DEMOCOUNT": "6"}) == Demo()


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("ON", True), ("false", False), ("0", False), ("", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert Demo.from_env("DEMO", {"DEMO_FLAG": raw}).flag is value


@pytest.mark.parametrize("raw", ["", "none", "None"])
def test_optional_fields_read_empty_or_none_as_none(raw: str) -> None:
    demo = Demo.from_env("DEMO", {"DEMO_MAYBE_PORT": raw, "DEMO_MAYBE_PATH": raw})
    assert demo.maybe_port is None and demo.maybe_path is None


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        ("DEMO_COUNT", "4.5", "DEMO_COUNT='4.5': expected int"),
        ("DEMO_COUNT", "", "DEMO_COUNT='': expected int"),
        ("DEMO_RATIO", "half", "DEMO_RATIO='half': expected float"),
        ("DEMO_FLAG", "maybe", "DEMO_FLAG='maybe': expected a boolean"),
        ("DEMO_MAYBE_PORT", "91OO", "DEMO_MAYBE_PORT='91OO': expected int"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable(var: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Demo.from_env("DEMO", {var: raw})
    assert str(info.value).startswith(message)


def test_server_settings_from_env() -> None:
    s = ServerSettings.from_env(
        "RLYARD",
        {
            "RLYARD_HOST": "0.0.0.0",
            "RLYARD_PORT": "50051",
            "RLYARD_METRICS_PORT": "",
            "RLYARD_MAX_CONCURRENT_RPCS": "8",
            "RLYARD_GRACE_S": "1.5",
            "RLYARD_READY_FILE": "/tmp/ready.json",
            "RLYARD_AUTH_TOKEN": "s3cret",
        },
    )
    assert (s.host, s.port, s.metrics_port, s.max_concurrent_rpcs) == ("0.0.0.0", 50051, None, 8)
    assert (s.grace_s, s.ready_file, s.auth_token) == (1.5, Path("/tmp/ready.json"), "s3cret")
    assert s.max_message_bytes == 16 * 1024 * 1024  # unset: the default


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLYARD_PORT", "6001")
    monkeypatch.setenv("RLYARD_METRICS_PORT", "0")
    s = ServerSettings.from_env("RLYARD")
    assert (s.port, s.metrics_port) == (6001, 0)


def test_a_bad_port_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^RLYARD_PORT='http': expected int"):
        ServerSettings.from_env("RLYARD", {"RLYARD_PORT": "http"})


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("max_concurrent_rpcs", "0", "RLYARD_MAX_CONCURRENT_RPCS must be >= 1"),
        ("max_message_bytes", "100", "RLYARD_MAX_MESSAGE_BYTES must be >= 1024"),
        ("grace_s", "-1", "RLYARD_GRACE_S must be >= 0"),
    ],
)
def test_server_settings_checks_name_the_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ServerSettings.from_env("RLYARD", {f"RLYARD_{field.upper()}": value})


def test_to_env_round_trips() -> None:
    original = ServerSettings(
        host="10.0.0.1", port=7000, metrics_port=None, grace_s=0.5, ready_file=Path("/r.json"), auth_token="t"
    )
    env = original.to_env("RLYARD")
    assert env["RLYARD_METRICS_PORT"] == "" and env["RLYARD_PORT"] == "7000"
    assert ServerSettings.from_env("RLYARD", env) == original
    demo = Demo(flag=True, names=("x", "y"), maybe_port=3)
    assert demo.to_env("D")["D_FLAG"] == "true"
    assert Demo.from_env("D", demo.to_env("D")) == demo


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerSettings().port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.ServiceError, grpc.StatusCode.INTERNAL),
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_each_service_error_carries_one_status_code(cls: type[errors.ServiceError], code: grpc.StatusCode) -> None:
    exc = cls("what happened")
    assert exc.code == code and exc.message == "what happened" and str(exc) == "what happened"


def test_config_error_is_a_value_error_not_a_service_error() -> None:
    assert issubclass(ConfigError, ValueError) and not issubclass(ConfigError, errors.ServiceError)
