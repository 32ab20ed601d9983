"""The kernel's side of the DSPy adapter: the ``DSPy(session)`` and ``Program`` handles, and
the notebook widgets that show and edit programs.
"""
