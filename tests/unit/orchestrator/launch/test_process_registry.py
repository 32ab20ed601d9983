"""The process registry's rows and the safety rules of its sweep (no processes started here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snakepit_nb._errors import ConfigurationError
from snakepit_nb.orchestrator.launch.registry import (
    RUN_DIR_MARKER,
    ProcessRegistry,
    RegistryRow,
    boot_id,
    default_registry_dir,
    process_start_time,
)

# Above Linux's largest possible pid_max (2**22): never a live process.
NO_SUCH_PID = 2**22 + 17


def test_reserve_activate_remove_round_trip(tmp_path: Path) -> None:
    registry = ProcessRegistry(tmp_path / "reg")
    row = registry.reserve(run_id="run-1", worker_id="w1", run_dir="/nowhere")
    assert row.state == "reserved"
    assert row.pid is None
    assert row.kernel_pid == os.getpid()
    assert row.boot_id == boot_id()
    assert registry.rows() == [row]

    active = registry.activate(row, pid=1234, pgid=1234, start_time=99.5)
    (stored,) = registry.rows()
    assert stored == active
    assert (stored.pid, stored.pgid, stored.start_time, stored.state) == (
        1234,
        1234,
        99.5,
        "active",
    )

    registry.remove(active)
    assert registry.rows() == []
    registry.remove(active)  # removing twice is harmless


def test_registry_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "reg"
    registry = ProcessRegistry(directory)
    row = registry.reserve(run_id="run-1", worker_id="w1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / row.file_name).stat().st_mode) == 0o600


def test_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SNAKEPIT_NB_REGISTRY_DIR", str(tmp_path / "x"))
    assert default_registry_dir() == tmp_path / "x"
    assert ProcessRegistry().directory == tmp_path / "x"
    monkeypatch.delenv("SNAKEPIT_NB_REGISTRY_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_registry_dir() == tmp_path / "snakepit_nb" / "registry"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_registry_dir() == Path.home() / ".cache" / "snakepit_nb" / "registry"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "x" * 65, ".hidden", "sp ace"])
def test_unsafe_ids_are_refused(tmp_path: Path, bad: str) -> None:
    registry = ProcessRegistry(tmp_path)
    with pytest.raises(ConfigurationError, match="not usable"):
        registry.reserve(run_id=bad, worker_id="w1")
    with pytest.raises(ConfigurationError, match="not usable"):
        registry.reserve(run_id="ok", worker_id=bad)
    assert registry.rows() == []


def _stale_row(run_id: str, **changes: object) -> RegistryRow:
    fields: dict[str, object] = {
        "run_id": run_id,
        "worker_id": "w1",
        "launch_id": f"w1-{run_id}",
        "kernel_pid": NO_SUCH_PID,
        "kernel_start_time": 1.0,
        "boot_id": boot_id(),
        "pid": NO_SUCH_PID,
        "pgid": NO_SUCH_PID,
        "start_time": 2.0,
        "state": "active",
    }
    fields.update(changes)
    return RegistryRow(**fields)  # type: ignore[arg-type]


def test_sweep_drops_other_boot_rows_and_removes_dead_ones(tmp_path: Path) -> None:
    registry = ProcessRegistry(tmp_path)
    registry._write(_stale_row("old-boot", boot_id="not-this-boot"))
    registry._write(_stale_row("dead-run"))
    report = registry.sweep(grace=0.1)
    assert report.dropped_other_boot == 1
    assert report.removed_rows == 1
    assert report.killed == []
    assert registry.rows() == []


def test_sweep_keeps_rows_of_a_live_kernel_and_excluded_runs(tmp_path: Path) -> None:
    registry = ProcessRegistry(tmp_path)
    me = os.getpid()
    mine = _stale_row("live-run", kernel_pid=me, kernel_start_time=process_start_time(me))
    registry._write(mine)
    registry._write(_stale_row("excluded-run"))
    report = registry.sweep(grace=0.1, exclude_run_ids={"excluded-run"})
    assert report.kept_live_rows == 2
    assert report.killed == []
    assert sorted(r.run_id for r in registry.rows()) == ["excluded-run", "live-run"]


def test_sweep_treats_a_reused_kernel_pid_as_dead(tmp_path: Path) -> None:
    """Same pid as a live process but another start time: that kernel is gone."""
    registry = ProcessRegistry(tmp_path)
    registry._write(_stale_row("reused", kernel_pid=os.getpid(), kernel_start_time=3.0))
    report = registry.sweep(grace=0.1)
    assert report.removed_rows == 1
    assert registry.rows() == []


def test_sweep_removes_corrupt_rows(tmp_path: Path) -> None:
    registry = ProcessRegistry(tmp_path)
    registry._write(_stale_row("fine", kernel_pid=os.getpid(),
                               kernel_start_time=process_start_time(os.getpid())))  # fmt: skip
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "wrong-shape.json").write_text('{"run_id": 1}')
    report = registry.sweep(grace=0.1)
    assert report.removed_rows == 2
    assert [r.run_id for r in registry.rows()] == ["fine"]


def test_sweep_removes_a_dead_runs_private_dir_only_if_it_is_marked(tmp_path: Path) -> None:
    registry = ProcessRegistry(tmp_path / "reg")
    marked = tmp_path / "snb-marked"
    marked.mkdir()
    (marked / RUN_DIR_MARKER).write_text("dead-run")
    (marked / "w1.1.err").write_text("log")
    unmarked = tmp_path / "not-ours"
    unmarked.mkdir()
    (unmarked / "precious").write_text("keep me")
    registry._write(_stale_row("dead-run", run_dir=str(marked)))
    registry._write(_stale_row("dead-run2", launch_id="w1-b", run_dir=str(unmarked)))
    report = registry.sweep(grace=0.1)
    assert report.removed_run_dirs == [str(marked)]
    assert not marked.exists()
    assert (unmarked / "precious").read_text() == "keep me"
