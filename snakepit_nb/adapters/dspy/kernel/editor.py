"""A notebook widget to edit a program's instructions (a session variable) in place.

>>> editor = InstructionsEditor(qa)      # shows the current instructions and their version
>>> editor                              # a text area, "apply" and "reload" buttons
>>> # typing and pressing "apply" writes ``qa.instructions``; the next run uses it.

"apply" writes with the version the editor showed as ``expected_version``: if an optimizer or
another person changed the instructions in between, nothing is overwritten and the editor
says so (press "reload" to see the current text). Create it on the main thread, like any
widget.
"""

from __future__ import annotations

from typing import Any

from snakepit_nb._errors import SnakepitError, VersionConflictError

from .client import Program

__all__ = ["InstructionsEditor"]


class InstructionsEditor:
    """Edit one predictor's instructions; ``text``, ``apply`` and ``reload`` are ipywidgets."""

    def __init__(self, program: Program, predictor: str | None = None) -> None:
        import ipywidgets as w

        self.program = program
        self.variable = program.variables.instructions(program.variables.predictor_for(predictor))
        self.text = w.Textarea(
            layout=w.Layout(width="640px", height="80px"),
            _dom_classes=["snakepit-dspy-instructions"],
        )
        self.apply = w.Button(description="apply", button_style="primary")
        self.reload = w.Button(description="reload")
        self.status = w.HTML(_dom_classes=["snakepit-dspy-instructions-status"])
        self.version = 0
        self.apply.on_click(lambda _: self.write())
        self.reload.on_click(lambda _: self.load())
        self.widget = w.VBox(
            [
                w.HTML(f"<b>{self.variable}</b>"),
                self.text,
                w.HBox([self.apply, self.reload]),
                self.status,
            ]
        )
        self.load()

    def load(self) -> None:
        """Show the variable's current text and version."""
        value, version = self.program.session.vars.get(self.variable, with_version=True)
        self.text.value = str(value)
        self.version = int(version)
        self.status.value = f"version {self.version}"

    def write(self) -> bool:
        """Write the text area's content; False (and a message) if it was refused."""
        text = self.text.value
        if not text.strip():
            self.status.value = "instructions must not be empty; nothing was written"
            return False
        try:
            record = self.program.session.vars.set(
                self.variable, text, expected_version=self.version
            )
        except VersionConflictError as exc:
            self.status.value = (
                f"not written: {self.variable} changed meanwhile (now version "
                f"{exc.current_version}); press reload to see it"
            )
            return False
        except SnakepitError as exc:
            self.status.value = f"not written: {exc}"
            return False
        self.version = int(getattr(record, "version", self.version + 1))
        self.status.value = f"written: version {self.version}; the next run uses it"
        return True

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
