"""The worker pool: supervised worker slots, and every way to call a tool in them.

``pool`` is the facade; around it, each part owns one job: ``dispatch`` (which worker takes a
call), ``supervision`` (start, watch, restart, recycle, stop), ``handle`` (one slot's state),
``channel`` (the multiplexed call stream), ``batches`` (``map``), ``streams`` (streaming calls)
and ``definitions`` (tools defined from cells).
"""
