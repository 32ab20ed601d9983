"""Session variables: typed, constrained, versioned, watchable, optionally persisted.

``types`` (types, constraints, records), ``store`` (one session's ``VariableStore``),
``stores`` (all sessions' stores), ``watchers`` (conflating watch buffers), ``persistence``
(SQLite) and ``wire`` (records as proto messages).
"""
