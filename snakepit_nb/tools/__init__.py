"""How a Python function becomes a tool: its spec from the signature and docstring, the binding
of call arguments, adapters with ``@tool`` methods, and tools defined from source text.

Used on both sides: workers serve adapters and cell-defined tools; the kernel serves kernel
tools with the same definitions. Imports neither the orchestrator nor the worker runtime.
"""
