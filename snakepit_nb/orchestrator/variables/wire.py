"""Variable records as proto messages: what the variable RPCs and prefetched calls carry.

Values travel through the codec with the variable's type as the ``Any`` label; the variable's
metadata gains ``snakepit_nb.updated_by`` (who wrote the current version).
"""

from __future__ import annotations

import json
from collections import OrderedDict

from google.protobuf.timestamp_pb2 import Timestamp

from snakepit_nb.orchestrator.variables.records import (
    KERNEL_SOURCE,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.orchestrator.variables.watchers import VariableChange
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import encode_any

__all__ = [
    "UPDATED_BY_KEY",
    "change_to_pb",
    "record_to_pb",
    "timestamp_pb",
    "update_for",
    "version_to_pb",
]

#: Variable metadata added on the wire: who wrote the current version ("kernel" or a worker id).
UPDATED_BY_KEY = "snakepit_nb.updated_by"


def timestamp_pb(seconds: float) -> Timestamp:
    """The proto ``Timestamp`` of a ``time.time()`` value."""
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def record_to_pb(record: VariableRecord) -> pb.Variable:
    """The proto ``Variable`` of a record; the value is labelled with the variable's type."""
    metadata = dict(record.metadata)
    metadata[UPDATED_BY_KEY] = record.source
    message = pb.Variable(
        id=record.id,
        name=record.name,
        type=record.type,
        value=encode_any(record.value, type_hint=record.type),
        constraints_json=json.dumps(dict(record.constraints)) if record.constraints else "",
        metadata=metadata,
        source=pb.Variable.ELIXIR if record.source == KERNEL_SOURCE else pb.Variable.PYTHON,
        last_updated_at=timestamp_pb(record.updated_at),
        version=record.version,
        access_control_json=json.dumps(dict(record.access)) if record.access else "",
    )
    lock = record.optimization
    if lock is not None:
        message.optimization_status.optimizing = True
        message.optimization_status.optimizer_id = lock.optimizer_id
        message.optimization_status.started_at.CopyFrom(timestamp_pb(lock.started_at))
    return message


def change_to_pb(change: VariableChange) -> pb.VariableUpdate:
    return pb.VariableUpdate(
        variable_id=change.variable.id,
        variable=record_to_pb(change.variable),
        update_source=change.source,
        update_metadata=dict(change.metadata),
        timestamp=timestamp_pb(change.at),
        update_type=change.kind,
        skipped_versions=change.skipped,
    )


# Every watcher of a variable gets the same change object: convert it once, not once per
# watcher (the value encoding dominates the fan-out cost). Small and loop-thread only.
_UPDATES: OrderedDict[int, tuple[VariableChange, pb.VariableUpdate]] = OrderedDict()
_UPDATES_KEPT = 256


def update_for(change: VariableChange) -> pb.VariableUpdate:
    hit = _UPDATES.get(id(change))
    if hit is not None and hit[0] is change:
        return hit[1]
    message = change_to_pb(change)
    _UPDATES[id(change)] = (change, message)
    if len(_UPDATES) > _UPDATES_KEPT:
        _UPDATES.popitem(last=False)
    return message


def version_to_pb(entry: VariableVersion, type_name: str) -> pb.VariableHistoryEntry:
    return pb.VariableHistoryEntry(
        version=entry.version,
        value=encode_any(entry.value, type_hint=type_name),
        timestamp=timestamp_pb(entry.at),
        changed_by=entry.source,
        metadata=dict(entry.metadata),
    )
