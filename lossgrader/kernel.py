"""Driving a Jupyter kernel that runs a hand-in's code: one kernel per hand-in, started
inside its sandbox, spoken to over jupyter_client's ``ipc`` transport (the connection
file and sockets lie in the hand-in's scratch folder, which both sides see).

Nothing the kernel sends is trusted: outputs are capped in size before they are kept,
and a kernel that dies or stops answering is reported, not waited for.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import time

OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")
TRUNCATED_NOTE = "\n…（输出过长，评分时已截断）\n"


class KernelSession:
    """One sandboxed kernel. ``make_sandbox()`` returns a fresh lossgrader.sandbox.Sandbox
    (possibly with enabled=False) for each start; ``output_cap`` bounds the bytes of
    outputs kept per cell."""

    def __init__(self, make_sandbox, scratch: str, output_cap: int):
        self.make_sandbox, self.scratch, self.output_cap = make_sandbox, scratch, output_cap
        self.sandbox = self.km = self.kc = None
        self.starts = 0

    def start(self, timeout: float = 120.0) -> None:
        from .sandbox import SandboxedKernelManager

        self.starts += 1
        self.sandbox = self.make_sandbox()
        name = f"kernel{self.starts}"
        self.km = SandboxedKernelManager(sandbox=self.sandbox, transport="ipc",
                                         ip=os.path.join(self.scratch, name),
                                         connection_file=os.path.join(self.scratch, name + ".json"))
        # the kernel's own stdout/stderr (banners, crash messages) are not the student's output
        self.km.start_kernel(cwd=self.scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=timeout)
        except RuntimeError as exc:
            self.shutdown()
            raise RuntimeError(f"the grading kernel did not start: {exc}") from None

    def alive(self) -> bool:
        try:
            return self.km is not None and self.km.is_alive()
        except Exception:
            return False

    def execute(self, code: str, timeout: float, silent: bool = False):
        """Run ``code``; returns (status, outputs, execution_count). status is "ok",
        "error" (the cell raised), "timeout" (interrupted after ``timeout`` s) or "dead"
        (the kernel exited or stopped answering)."""
        from nbformat.v4 import output_from_msg

        msg_id = self.kc.execute(code, silent=silent, store_history=not silent, allow_stdin=False,
                                 stop_on_error=False)
        deadline = time.monotonic() + timeout
        outputs, size, truncated = [], 0, False
        status, count, interrupted = "ok", None, False
        while True:
            now = time.monotonic()
            if now > deadline:
                if interrupted or not self.alive():
                    return "dead", outputs, count
                interrupted = True
                status = "timeout"
                try:
                    self.km.interrupt_kernel()
                except Exception:
                    return "dead", outputs, count
                deadline = now + 10.0      # time to come back to idle after the interrupt
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not self.alive():
                    return "dead", outputs, count
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg.get("msg_type"), msg.get("content", {})
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "execute_input":
                count = content.get("execution_count")
            elif kind == "clear_output":
                outputs, size = [], 0
            elif kind in OUTPUT_TYPES and not silent:
                if kind == "error" and status == "ok":
                    status = "error"
                if truncated:
                    continue
                try:
                    out = output_from_msg(msg)
                except Exception:
                    continue
                weight = len(json.dumps(out, ensure_ascii=False))
                if size + weight > self.output_cap:
                    truncated = True
                    outputs.append(_note())
                    continue
                size += weight
                if kind == "stream" and outputs and outputs[-1].get("output_type") == "stream" \
                        and outputs[-1].get("name") == out.get("name"):
                    outputs[-1]["text"] += out["text"]
                else:
                    outputs.append(out)
            elif kind == "error" and status == "ok":
                status = "error"
        return status, outputs, count

    def shutdown(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:
                pass
        if self.sandbox is not None:
            try:
                self.sandbox.kill()
            except Exception:
                pass
        self.sandbox = self.km = self.kc = None


def _note():
    from nbformat.v4 import new_output
    return new_output("stream", name="stdout", text=TRUNCATED_NOTE)
