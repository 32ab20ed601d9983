"""Which tools exist, and where: in workers (per worker), defined from cells, or in the kernel.

Specs are kept as wire messages (``pb.ToolSpec``); users see ``ToolSpec``, a frozen view of
one. Names and metadata are validated on the way in, with the published bridge's limits (names
``^[A-Za-z0-9][A-Za-z0-9_.-]*$`` up to 64 characters; at most 32 metadata entries and 4096
bytes of metadata).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError, ToolNotFoundError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.names import check_tool_name, did_you_mean

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "ParameterInfo",
    "ToolRegistry",
    "ToolSpec",
]

MAX_METADATA_ENTRIES = 32
MAX_METADATA_BYTES = 4096
_LIST_AT_MOST = 25


class _NoDefault:
    def __repr__(self) -> str:
        return "<required>"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a tool."""

    name: str
    type: str = ""
    description: str = ""
    required: bool = False
    default: Any = NO_DEFAULT
    validation_json: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """What a tool is called, what it takes and how it answers.

    >>> [spec.signature for spec in client.tools()][:1]
    ['add(a: int, b: int = 0)']
    """

    name: str
    description: str = ""
    parameters: tuple[ParameterInfo, ...] = ()
    supports_streaming: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    required_variables: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``"kernel"`` (runs in the notebook kernel), ``"cell"`` or ``"worker"``."""
        if self.metadata.get("kernel") == "true":
            return "kernel"
        if self.metadata.get("source") == "cell":
            return "cell"
        return "worker"

    @property
    def idempotent(self) -> bool:
        return self.metadata.get("idempotent") == "true"

    @property
    def signature(self) -> str:
        parts = []
        for p in self.parameters:
            text = f"{p.name}: {p.type}" if p.type else p.name
            if not p.required and p.default is not NO_DEFAULT:
                text += f" = {p.default!r}"
            elif not p.required:
                text += " = ..."
            parts.append(text)
        return f"{self.name}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import tool_spec_html

        return tool_spec_html(self)

    def __repr__(self) -> str:
        return f"<ToolSpec {self.kind} tool {self}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.describe())

    def describe(self) -> str:
        """Several lines: the signature, the description, one line per parameter."""
        stream = " [stream]" if self.supports_streaming else ""
        lines = [f"{self.kind} tool {self.signature}{stream}"]
        if self.description.strip():
            lines.extend(f"  {line}" for line in self.description.strip().splitlines())
        for param in self.parameters:
            need = "required" if param.required else "optional"
            text = f"    {param.name}: {param.type or 'any'} ({need})"
            lines.append(text + (f" — {param.description}" if param.description else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        stream = " [stream]" if self.supports_streaming else ""
        first = self.description.strip().splitlines()[0] if self.description.strip() else ""
        return f"{self.signature}{stream}" + (f" — {first}" if first else "")

    @classmethod
    def from_pb(cls, spec: pb.ToolSpec) -> ToolSpec:
        from snakepit_nb.protocol.codec import decode_any

        params = []
        for p in spec.parameters:
            default: Any = NO_DEFAULT
            if p.HasField("default_value") and not p.required:
                try:
                    default = decode_any(p.default_value)
                except Exception:  # a peer's odd default must not hide the tool
                    default = NO_DEFAULT
            params.append(
                ParameterInfo(
                    name=p.name,
                    type=p.type,
                    description=p.description,
                    required=p.required,
                    default=default,
                    validation_json=p.validation_json,
                )
            )
        return cls(
            name=spec.name,
            description=spec.description,
            parameters=tuple(params),
            supports_streaming=spec.supports_streaming,
            metadata=dict(spec.metadata),
            required_variables=tuple(spec.required_variables),
        )


def check_metadata(name: str, metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgumentError(
            f"tool {name!r} has {len(metadata)} metadata entries; at most "
            f"{MAX_METADATA_ENTRIES} are allowed"
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"tool {name!r} has {size} bytes of metadata; at most {MAX_METADATA_BYTES} are "
            "allowed (keep large data out of tool metadata)"
        )


def spec_from_registration(reg: pb.ToolRegistration | pb.ToolSpec) -> pb.ToolSpec:
    """A ``pb.ToolSpec`` from what a worker sent (``RegisterTools`` sends registrations)."""
    if isinstance(reg, pb.ToolSpec):
        return reg
    spec = pb.ToolSpec(
        name=reg.name,
        description=reg.description,
        supports_streaming=reg.supports_streaming,
        required_variables=list(reg.required_variables),
    )
    spec.parameters.extend(reg.parameters)
    spec.metadata.update(reg.metadata)
    # The published worker sends its required variables as a comma list in metadata.
    if not spec.required_variables and reg.metadata.get("required_variables"):
        names = [v.strip() for v in reg.metadata["required_variables"].split(",")]
        spec.required_variables.extend(n for n in names if n)
    return spec


def validate_spec(spec: pb.ToolSpec) -> None:
    check_tool_name(spec.name)
    check_metadata(spec.name, spec.metadata)


class ToolRegistry:
    """Tools of one runtime. Lives on the loop thread."""

    def __init__(self) -> None:
        self._worker_tools: dict[str, dict[str, pb.ToolSpec]] = {}
        self._cell_tools: dict[str, pb.ToolSpec] = {}
        self._kernel_tools: dict[str, pb.ToolSpec] = {}
        # Bumped on every change, so callers can cache derived views.
        self.generation = 0

    # ------------------------------------------------------------------ workers

    def register_worker_tools(
        self, worker_id: str, specs: Iterable[pb.ToolSpec | pb.ToolRegistration]
    ) -> list[pb.ToolSpec]:
        """Record what ``worker_id`` serves (replacing what it served before); all or nothing."""
        converted = [spec_from_registration(s) for s in specs]
        for spec in converted:
            validate_spec(spec)
        self._worker_tools[worker_id] = {spec.name: spec for spec in converted}
        self.generation += 1
        return converted

    def add_worker_tools(
        self, worker_id: str, specs: Iterable[pb.ToolSpec | pb.ToolRegistration]
    ) -> list[pb.ToolSpec]:
        """Add to what ``worker_id`` serves (published workers register once per session)."""
        converted = [spec_from_registration(s) for s in specs]
        for spec in converted:
            validate_spec(spec)
        self._worker_tools.setdefault(worker_id, {}).update({s.name: s for s in converted})
        self.generation += 1
        return converted

    def forget_worker(self, worker_id: str) -> None:
        if self._worker_tools.pop(worker_id, None) is not None:
            self.generation += 1

    def workers_for(self, name: str) -> list[str]:
        """Ids of the workers known to serve ``name`` (cell tools: every known worker)."""
        if name in self._cell_tools:
            return list(self._worker_tools)
        return [wid for wid, tools in self._worker_tools.items() if name in tools]

    def worker_ids(self) -> list[str]:
        return list(self._worker_tools)

    # ------------------------------------------------------------------ cell and kernel tools

    def add_cell_tool(self, spec: pb.ToolSpec) -> None:
        validate_spec(spec)
        if spec.metadata.get("source") != "cell":
            spec.metadata["source"] = "cell"
        self._cell_tools[spec.name] = spec
        self.generation += 1

    def remove_cell_tool(self, name: str) -> bool:
        removed = self._cell_tools.pop(name, None) is not None
        self.generation += removed
        return removed

    def cell_tools(self) -> list[pb.ToolSpec]:
        return list(self._cell_tools.values())

    def add_kernel_tool(self, spec: pb.ToolSpec) -> None:
        validate_spec(spec)
        spec.metadata["kernel"] = "true"
        self._kernel_tools[spec.name] = spec
        self.generation += 1

    def remove_kernel_tool(self, name: str) -> bool:
        removed = self._kernel_tools.pop(name, None) is not None
        self.generation += removed
        return removed

    def kernel_tools(self) -> list[pb.ToolSpec]:
        return list(self._kernel_tools.values())

    def kernel_tool(self, name: str) -> pb.ToolSpec | None:
        return self._kernel_tools.get(name)

    # ------------------------------------------------------------------ lookups

    def worker_tool(self, name: str) -> pb.ToolSpec | None:
        """The spec of a tool that runs in workers (cell-defined ones included), or None."""
        spec = self._cell_tools.get(name)
        if spec is not None:
            return spec
        for tools in self._worker_tools.values():
            spec = tools.get(name)
            if spec is not None:
                return spec
        return None

    def get(self, name: str) -> pb.ToolSpec:
        """The spec of ``name`` (worker tools first, then kernel tools) or ToolNotFoundError."""
        spec = self.worker_tool(name) or self._kernel_tools.get(name)
        if spec is None:
            raise self.not_found(name)
        return spec

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            self.worker_tool(name) is not None or name in self._kernel_tools
        )

    def specs(self) -> list[pb.ToolSpec]:
        """Every tool once, by name: worker tools, cell tools, then kernel tools."""
        merged: dict[str, pb.ToolSpec] = {}
        for tools in self._worker_tools.values():
            for name, spec in tools.items():
                merged.setdefault(name, spec)
        merged.update(self._cell_tools)
        for name, spec in self._kernel_tools.items():
            merged.setdefault(name, spec)
        return list(merged.values())

    def names(self) -> list[str]:
        return sorted(spec.name for spec in self.specs())

    def not_found(self, name: str) -> ToolNotFoundError:
        names = self.names()
        if not names:
            listing = "no tools are registered yet (are the workers started?)"
        else:
            shown = ", ".join(names[:_LIST_AT_MOST])
            more = f" and {len(names) - _LIST_AT_MOST} more" if len(names) > _LIST_AT_MOST else ""
            listing = f"available: {shown}{more}"
        hint = did_you_mean(name, names)
        return ToolNotFoundError(f"tool {name!r} is not registered{hint}; {listing}")
