"""The ways a call travels to a worker, each written against the pool's seam (``PoolHost``).

``direct`` and ``direct_map``: over the worker's lane (local workers of an authenticated pool),
from the calling thread or an executor thread; ``unary``: over the worker's gRPC call channel,
or as a plain RPC to a foreign worker; ``batches``: maps over call channels; ``streams``:
streaming calls; ``requests``: calls and answers as gRPC messages (JSON, or pickles between
the kernel and its own workers).
"""
