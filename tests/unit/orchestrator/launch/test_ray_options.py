"""Choosing a launcher, and the RayLauncher's settings: bad values fail before anything starts."""

from __future__ import annotations

import pytest

import snakepit_nb as sp
from snakepit_nb.client.clients import resolve_launcher
from snakepit_nb.orchestrator.launch.ray_launcher import RayLauncher


def test_launcher_names_and_objects() -> None:
    assert resolve_launcher(None) is None
    assert resolve_launcher("local") is None
    launcher = RayLauncher(address="127.0.0.1:1")
    assert resolve_launcher(launcher) is launcher
    assert isinstance(resolve_launcher("ray"), RayLauncher)
    with pytest.raises(sp.ConfigurationError, match="launcher must be 'local', 'ray'"):
        resolve_launcher("kubernetes")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_cpus": -1}, "num_cpus must be a number >= 0"),
        ({"num_gpus": "one"}, "num_gpus must be a number >= 0"),
        ({"placement": "everywhere"}, "placement must be 'spread', 'pack'"),
        ({"tls": "yes"}, "tls must be None, True or False"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(sp.ConfigurationError, match=message):
        RayLauncher(**settings)  # type: ignore[arg-type]


def test_spread_is_the_default_placement() -> None:
    assert RayLauncher()._options()["scheduling_strategy"] == "SPREAD"
    assert RayLauncher(placement="pack")._options()["scheduling_strategy"] == "DEFAULT"
    options = RayLauncher(num_cpus=2, resources={"big": 1}, runtime_env={"env_vars": {}})
    assert options._options() == {
        "num_cpus": 2,
        "num_gpus": 0,
        "scheduling_strategy": "SPREAD",
        "max_restarts": 0,
        "resources": {"big": 1},
        "runtime_env": {"env_vars": {}},
    }
