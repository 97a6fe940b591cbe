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
    outputs kept per cell. With ``warm`` (a lossgrader.warm.WarmSandbox whose scratch
    folder is ``scratch``) kernels are forked by its zygote instead; if that sandbox
    breaks, the session goes on with cold sandboxes on the same scratch folder."""

    def __init__(self, make_sandbox, scratch: str, output_cap: int, warm=None):
        self.make_sandbox, self.scratch, self.output_cap = make_sandbox, scratch, output_cap
        self.sandbox = self.km = self.kc = None
        self.warm = warm
        self.starts = 0

    def start(self, timeout: float = 120.0) -> None:
        from .sandbox import SandboxedKernelManager
        from .warm import WarmBroken

        self.starts += 1
        if self.warm is not None:
            try:
                return self._start_warm(timeout)
            except WarmBroken:
                self._stop_client()
                self.warm = None
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

    def _start_warm(self, timeout: float) -> None:
        from jupyter_client.blocking import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        from .warm import WarmBroken

        name = f"kernel{self.starts}"
        connection_file = os.path.join(self.scratch, name + ".json")
        write_connection_file(connection_file, transport="ipc", ip=os.path.join(self.scratch, name))
        self.warm.fork_kernel(connection_file)
        self.kc = BlockingKernelClient(connection_file=connection_file)
        self.kc.load_connection_file()
        self.kc.start_channels()
        # jupyter_client's wait_for_ready polls heartbeats every 0.2 s first (it has no
        # kernel manager to ask): a kernel_info reply, then a message on IOPub (so that no
        # output is lost to a subscription not yet connected) says the same sooner
        deadline = time.monotonic() + timeout
        while True:
            self.kc.kernel_info()
            try:
                reply = self.kc.shell_channel.get_msg(timeout=0.5)
            except queue.Empty:
                reply = None
            if reply is not None and reply.get("msg_type") == "kernel_info_reply":
                try:
                    self.kc.iopub_channel.get_msg(timeout=0.2)
                    return
                except queue.Empty:
                    pass
            if not self.warm.kernel_alive():
                self.warm.reset(wipe_scratch=False)
                raise RuntimeError("the grading kernel did not start: it exited")
            if time.monotonic() > deadline:
                self.warm.kill()
                raise WarmBroken("the grading kernel did not answer")

    def alive(self) -> bool:
        if self.warm is not None:
            from .warm import WarmBroken
            try:
                return self.kc is not None and self.warm.kernel_alive()
            except WarmBroken:
                return False
        try:
            return self.km is not None and self.km.is_alive()
        except Exception:
            return False

    def interrupt(self) -> None:
        """SIGINT by message (ipykernel sends it to its own process group)."""
        if self.warm is not None:
            self.kc.control_channel.send(self.kc.session.msg("interrupt_request", content={}))
        else:
            self.km.interrupt_kernel()

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
                    self.interrupt()
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

    def _stop_client(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        self.kc = None

    def shutdown(self) -> None:
        self._stop_client()
        if self.warm is not None:
            from .warm import WarmBroken
            try:
                self.warm.reset(wipe_scratch=False)   # the kernel and all it started, /tmp, /dev/shm
            except WarmBroken:
                self.warm = None
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
