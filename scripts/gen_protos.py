"""Generate the protobuf and gRPC stubs from protos/snakepit_bridge.proto.

    python scripts/gen_protos.py          # regenerate snakepit_nb/protocol/_generated/
    python scripts/gen_protos.py --check  # fail if the committed stubs drifted

The proto is copied to a path that mirrors the package, so the generated files import each
other package-absolutely (`from snakepit_nb.protocol._generated import ...`) without rewriting.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "protos" / "snakepit_bridge.proto"
PACKAGE_DIR = Path("snakepit_nb") / "protocol" / "_generated"
OUTPUTS = ("snakepit_bridge_pb2.py", "snakepit_bridge_pb2.pyi", "snakepit_bridge_pb2_grpc.py")


def generate(into: Path) -> None:
    with tempfile.TemporaryDirectory() as src:
        mirrored = Path(src) / PACKAGE_DIR / PROTO.name
        mirrored.parent.mkdir(parents=True)
        shutil.copy(PROTO, mirrored)
        (into / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src}",
                f"-I{include}",
                f"--python_out={into}",
                f"--pyi_out={into}",
                f"--grpc_python_out={into}",
                str(mirrored.relative_to(src)),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drifted = [
            name
            for name in OUTPUTS
            if not (ROOT / PACKAGE_DIR / name).exists()
            or not filecmp.cmp(
                Path(tmp) / PACKAGE_DIR / name, ROOT / PACKAGE_DIR / name, shallow=False
            )
        ]
    if drifted:
        print(f"generated stubs drifted from {PROTO.relative_to(ROOT)}: {', '.join(drifted)}")
        print("regenerate them with: python scripts/gen_protos.py")
        return 1
    print("generated stubs match the proto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
