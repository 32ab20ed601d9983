"""numpy stays an optional, lazy import of the codec."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROBE = """
import sys
import snakepit_nb.protocol.codec as codec
import snakepit_nb.protocol.status, snakepit_nb.protocol.auth
assert "numpy" not in sys.modules, "importing the codec imported numpy"
value = {"a": [1, 2.5, float("nan"), b"x", {1: None}]}
decoded = codec.decode_json(codec.encode_json(value))
assert decoded["a"][4] == {1: None} and decoded["a"][3] == b"x"
assert codec.decode_any(codec.encode_any(value))["a"][0] == 1
assert "numpy" not in sys.modules, "plain values imported numpy"
print("ok")
"""

BLOCKED = """
import sys
sys.modules["numpy"] = None  # as if numpy were not installed
from snakepit_nb._errors import InvalidArgumentError
import snakepit_nb.protocol.codec as codec
from google.protobuf.any_pb2 import Any
assert codec.decode_json(codec.encode_json([1, "x"])) == [1, "x"]
tensor = Any(type_url="type.googleapis.com/snakepit.tensor", value=b'{"shape":[1],"data":[2]}')
assert codec.decode_any(tensor) == {"shape": [1], "data": [2]}
try:
    codec.decode_json(b'{"$sp":"ndarray","dtype":"<f8","shape":[0],"b64":""}')
except InvalidArgumentError as exc:
    assert "numpy is not installed" in str(exc), exc
else:
    raise AssertionError("no error without numpy")
print("ok")
"""


@pytest.mark.parametrize("probe", [PROBE, BLOCKED], ids=["lazy", "missing"])
def test_codec_without_numpy(probe: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
