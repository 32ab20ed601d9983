"""A real Jupyter kernel driven through jupyter_client, for the notebook tests."""

from __future__ import annotations

import json
import time
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import kernel_ext

__all__ = ["Kernel"]


class Kernel:
    def __init__(self, specs: KernelSpecManager) -> None:
        self.km = KernelManager(kernel_name=kernel_ext.KERNEL_NAME, kernel_spec_manager=specs)
        self.km.start_kernel()
        self.connect()

    def connect(self) -> None:
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)  # type: ignore[union-attr]

    def execute(
        self, code: str, timeout: float = 60
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run ``code``; returns the reply content and every IOPub message until idle."""
        msg_id = self.kc.execute(code)
        return self.collect(msg_id, timeout)

    def collect(
        self, msg_id: str, timeout: float, on_message: Any = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        messages: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no idle status within {timeout} s; got {messages[-5:]}"
            msg = self.kc.get_iopub_msg(timeout=remaining)
            msg["received"] = time.monotonic()
            messages.append(msg)
            if on_message is not None:
                on_message(msg)
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id
            ):
                break
        # Skip stale replies (wait_for_ready may leave a second kernel_info_reply queued).
        while True:
            reply = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"], messages

    def stdout(self, messages: list[dict[str, Any]]) -> str:
        return "".join(
            m["content"]["text"]
            for m in messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def value(self, expr: str) -> Any:
        reply, messages = self.execute(f"import json as _j; print(_j.dumps({expr}))")
        assert reply["status"] == "ok", reply
        return json.loads(self.stdout(messages).strip().splitlines()[-1])

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)

    def outputs(self, messages: list[dict[str, Any]], name: str) -> str:
        """Everything the cell's ``stream`` messages wrote to ``name`` (stdout or stderr)."""
        return "".join(
            m["content"]["text"]
            for m in messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )
