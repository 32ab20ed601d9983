"""Running a program once, whole or streamed field by field (on a worker thread).

Both run inside ``dspy.context(lm=<per-call copy>)`` and never touch ``dspy.configure``.
Streaming uses ``dspy.streamify`` with one ``StreamListener`` per output field of each
predictor, and turns what it yields into plain chunks:

* ``{"type": "token", "field": "answer", "predictor": "predict", "text": "4", "last": True}``
* ``{"type": "status", "message": "calling fake/rules"}``

A model answer served from DSPy's cache produces no tokens, only the final prediction.
"""

from __future__ import annotations

from typing import Any

from .background import BackgroundRun
from .runtime import CallSetup

__all__ = ["parallel_predictions", "plain_prediction", "run_prediction", "stream_prediction"]


def plain_prediction(prediction: Any) -> dict[str, Any]:
    """A prediction's fields as JSON-friendly values."""
    out: dict[str, Any] = {}
    for key, value in dict(prediction).items():
        if value is None or isinstance(value, bool | int | float | str | list | tuple | dict):
            out[str(key)] = value
        else:
            out[str(key)] = str(value)
    return out


def run_prediction(setup: CallSetup, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run the program once and return its prediction's fields."""
    import dspy

    with dspy.context(lm=setup.lm):
        prediction = setup.program(**inputs)
    return plain_prediction(prediction)


def parallel_predictions(
    setup: CallSetup, inputs: list[dict[str, Any]], num_threads: int
) -> list[dict[str, Any]]:
    """Run the program on each inputs dict with DSPy's ``Parallel`` threads, in order."""
    import dspy

    examples = [dspy.Example(**item).with_inputs(*item) for item in inputs]
    with dspy.context(lm=setup.lm):
        predictions = setup.program.batch(examples, num_threads=num_threads, max_errors=0)
    return [plain_prediction(p) for p in predictions]


def stream_prediction(run: BackgroundRun, setup: CallSetup, inputs: dict[str, Any]) -> Any:
    """Run the program with field-level streaming; emits chunks, returns the prediction."""
    import dspy
    from dspy.streaming import StatusMessage, StatusMessageProvider, StreamListener, StreamResponse

    model = setup.settings.model

    class _Status(StatusMessageProvider):  # type: ignore[misc]
        def lm_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str:
            return f"calling {model}"

        def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str:
            return f"running {type(instance).__name__}"

    listeners = [
        StreamListener(field, predict=predictor, predict_name=name)
        for name, predictor in setup.program.named_predictors()
        for field in predictor.signature.output_fields
    ]
    final: dict[str, Any] | None = None
    with dspy.context(lm=setup.lm):
        streamer = dspy.streamify(
            setup.program,
            stream_listeners=listeners,
            status_message_provider=_Status(),
            async_streaming=False,
        )
        stream = streamer(**inputs)
        try:
            for item in stream:
                run.check()
                if isinstance(item, StreamResponse):
                    run.emit(
                        {
                            "type": "token",
                            "field": item.signature_field_name,
                            "predictor": item.predict_name,
                            "text": item.chunk,
                            "last": bool(item.is_last_chunk),
                        }
                    )
                elif isinstance(item, StatusMessage):
                    run.emit({"type": "status", "message": item.message})
                elif isinstance(item, dspy.Prediction):
                    final = plain_prediction(item)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    if final is None:
        raise RuntimeError("DSPy's stream ended without a prediction")
    return final
