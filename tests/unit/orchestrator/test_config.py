"""Config validation: every bad setting is refused with a message that says what to pass."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest

from snakepit_nb._errors import ConfigurationError
from snakepit_nb.orchestrator.config import DEFAULT_ADAPTER, Config


def test_defaults_are_usable() -> None:
    config = Config()
    assert config.workers == 2
    assert config.adapter == DEFAULT_ADAPTER
    assert config.python == sys.executable
    assert config.transport == "tcp"
    assert config.auth is True
    assert config.call_timeout is None
    assert dict(config.env) == {}
    assert config.capacity == 1
    assert config.async_capacity == 64
    assert config.cancel_grace == 3.0


def test_frozen_and_replace_revalidates() -> None:
    config = Config(workers=3)
    with pytest.raises(AttributeError):
        config.workers = 4  # type: ignore[misc]
    assert config.replace(workers=4).workers == 4
    with pytest.raises(ConfigurationError, match="workers"):
        config.replace(workers=0)


def test_unknown_setting_suggests_the_right_name() -> None:
    with pytest.raises(
        ConfigurationError, match="unknown setting 'worker'; did you mean 'workers'"
    ):
        Config.from_kwargs(worker=2)
    with pytest.raises(ConfigurationError, match="known settings: "):
        Config.from_kwargs(zzzzzz=1)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"workers": 0}, "workers=0 is out of range"),
        ({"cancel_grace": 0}, "cancel_grace=0 is not usable"),
        ({"cancel_grace": math.inf}, "cancel_grace=inf is not usable"),
        ({"cancel_grace": "3"}, "cancel_grace must be a number of seconds"),
        ({"workers": 2.5}, "workers must be an integer"),
        ({"workers": True}, "workers must be an integer"),
        ({"capacity": 0}, "capacity=0 is out of range"),
        ({"async_capacity": 0}, "async_capacity=0 is out of range"),
        ({"async_capacity": 10_001}, "async_capacity=10001 is out of range"),
        ({"async_capacity": 1.5}, "async_capacity must be an integer"),
        ({"max_queue": -1}, "max_queue=-1 is out of range"),
        ({"startup_timeout": 0}, "startup_timeout=0 is not usable"),
        ({"startup_timeout": math.inf}, "positive, finite"),
        ({"call_timeout": -1.0}, "or None for no limit"),
        ({"call_timeout": "5"}, "call_timeout must be a number of seconds or None"),
        ({"session_ttl": math.nan}, "session_ttl=nan"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"max_message_bytes": 10}, "max_message_bytes=10 is out of range"),
        ({"recycle_after_calls": 0}, "recycle_after_calls=0"),
        ({"recycle_above_rss": 10}, "recycle_above_rss=10"),
        ({"adapter": "not a path"}, "'package.module:ClassName'"),
        ({"adapter": ""}, "adapter=''"),
        ({"python": ""}, "python must be a non-empty string"),
        ({"transport": "udp"}, "transport='tcp'"),
        ({"auth": "yes"}, "auth must be True or False"),
        ({"worker_command": "python server.py"}, "list of strings"),
        ({"worker_command": []}, "non-empty list"),
        ({"worker_command": ["python", ""]}, "non-empty list"),
        ({"env": ["A=1"]}, "env must be a mapping"),
        ({"env": {"A": 1}}, "env['A'] must be a string"),
        ({"env": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"env": {"SNAKEPIT_NB_TOKEN": "x"}}, "may not set SNAKEPIT_NB_TOKEN"),
        ({"max_sessions": 0}, "max_sessions=0"),
        ({"kernel_tool_threads": 0}, "kernel_tool_threads=0"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config.from_kwargs(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # plain `except ValueError` works too


def test_accepted_spellings_are_normalised() -> None:
    config = Config(
        adapter="pkg.mod.ClassName",
        worker_command=["python", "grpc_server.py"],
        env={"OMP_NUM_THREADS": "1"},
        transport="unix",
        call_timeout=5,
    )
    assert config.worker_command == ("python", "grpc_server.py")
    assert dict(config.env) == {"OMP_NUM_THREADS": "1"}
    with pytest.raises(TypeError):
        config.env["X"] = "1"  # type: ignore[index]


def test_env_is_copied() -> None:
    env = {"A": "1"}
    config = Config(env=env)
    env["A"] = "2"
    assert config.env["A"] == "1"
