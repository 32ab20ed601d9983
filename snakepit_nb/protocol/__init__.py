"""Wire-level code: generated stubs (quarantined in ``_generated``), the value codec and the
mapping between gRPC status codes and snakepit_nb's exceptions. The only package that imports
the generated stubs directly."""

from __future__ import annotations

from snakepit_nb.protocol._generated import snakepit_bridge_pb2 as pb
from snakepit_nb.protocol._generated import snakepit_bridge_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
