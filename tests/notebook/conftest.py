"""Fixtures of the notebook tests: the "Python (snakepit)" kernelspec and a real kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from kernels import Kernel

import kernel_ext


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("kernels")
    dest = kernel_ext.install(prefix=str(prefix))
    spec = json.loads((Path(dest) / "kernel.json").read_text())
    assert spec["display_name"] == "Python (snakepit)"
    assert spec["argv"][-2:] == ["--ext", "snakepit_nb"]
    return KernelSpecManager(kernel_dirs=[str(Path(dest).parent)])


@pytest.fixture
def kernel(kernel_specs: KernelSpecManager) -> Iterator[Kernel]:
    k = Kernel(kernel_specs)
    try:
        yield k
    finally:
        k.close()
