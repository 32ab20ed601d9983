"""The version of snakepit_nb (kept equal to pyproject.toml's by a test).

Workers report it when they start; the pool refuses a worker whose version differs from the
kernel's, so a stale virtual environment is found at once.
"""

__version__ = "0.1.0"
