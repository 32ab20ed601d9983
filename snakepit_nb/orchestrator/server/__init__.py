"""The orchestrator's gRPC server: what workers (and the published bridge) call back into.

``bridge`` serves sessions, heartbeats, tool registration and kernel tools and runs the
``grpc.aio`` server; ``variables`` serves the variable RPCs.
"""
