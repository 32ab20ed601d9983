"""Launchers: how worker processes are started, found, watched and stopped.

``base`` holds the interface the pool talks to; ``local`` starts workers as processes on this
machine; ``registry`` is the on-disk record of what was started, swept for leftovers.
"""
