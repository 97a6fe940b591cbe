"""Driving a Jupyter kernel that runs a hand-in's code: one kernel per hand-in, started
inside its sandbox (forked by the thread's warm sandbox, or alone in a fresh one).

How the two sides meet, without a shared writable path: before each start the worker
creates the kernel's five listening Unix sockets in a folder of its own (``ipc``, mode
0700, never shown to the sandbox) and a socketpair for the runtime's requests
(:class:`lossgrader.channel.Wire`), and passes the kernel those descriptors
(``lossgrader.zygote.launch_kernel``: ipykernel accepts on the inherited listeners). The
worker's client connects to the paths in its own folder; the sandbox can neither replace
nor see them, and nothing outside reads or writes the hand-in's scratch folder.

Nothing the kernel sends is trusted: outputs are capped in size (per cell and per
hand-in) before they are kept, and a kernel that dies or stops answering is reported,
not waited for.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import time

from .channel import Wire

OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")
TRUNCATED_NOTE = "\n…（输出过长，评分时已截断）\n"
BUDGET_NOTE = "\n…（这份作业的输出总量超过了上限，评分时不再保留后面单元的输出）\n"
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")      # lossgrader.zygote.CHANNELS
KERNEL_PREFIX = "/kernel"     # the kernel's own name for its sockets (never a path: it binds no file)


class KernelEndpoints:
    """One kernel start's listening sockets (in ``folder``, the worker's own) and runtime
    socketpair. ``kernel_fds`` go to the kernel and are closed here once it has them."""

    def __init__(self, folder: str, name: str):
        self.prefix = os.path.join(folder, name)
        self.key = secrets.token_hex(32)
        self.listeners, self.paths = [], []
        self.wire = self._theirs = None
        try:
            for port, _ in enumerate(CHANNELS, 1):
                path = f"{self.prefix}-{port}"
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.listeners.append(listener)
                listener.bind(path)
                self.paths.append(path)
                listener.listen(16)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except BaseException:
            self.close()
            raise
        self.wire, self._theirs = Wire(ours), theirs

    @property
    def ports(self) -> dict:
        return {f"{name}_port": port for port, name in enumerate(CHANNELS, 1)}

    def kernel_info(self) -> dict:
        """What the kernel is told: its key and ports (its socket names are its own)."""
        return {"key": self.key, "signature_scheme": "hmac-sha256", "ip": KERNEL_PREFIX, **self.ports}

    def client_info(self) -> dict:
        return {"transport": "ipc", "ip": self.prefix, "key": self.key, "signature_scheme": "hmac-sha256",
                **self.ports}

    @property
    def kernel_fds(self) -> list:
        return [s.fileno() for s in self.listeners] + [self._theirs.fileno()]

    def handed_over(self) -> None:
        """The kernel holds its descriptors now: close ours (the paths stay, ours alone)."""
        for sock in (*self.listeners, self._theirs):
            if sock is not None:
                sock.close()
        self.listeners, self._theirs = [], None

    def close(self) -> None:
        self.handed_over()
        if self.wire is not None:
            self.wire.close()
        for path in self.paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.paths = []


class KernelSession:
    """One sandboxed kernel. ``make_sandbox()`` returns a fresh lossgrader.sandbox.Sandbox
    (possibly with enabled=False) for each cold start; ``ipc_folder`` is the worker's own
    folder for the kernel's sockets; ``output_cap`` bounds the bytes of outputs kept per
    cell and ``output_budget`` those of the whole session. With ``warm`` (a
    lossgrader.warm.WarmSandbox) kernels are forked by its zygote instead; if that sandbox
    breaks, the session goes on with cold sandboxes."""

    def __init__(self, make_sandbox, ipc_folder: str, output_cap: int, warm=None, output_budget=None):
        self.make_sandbox, self.ipc_folder, self.output_cap = make_sandbox, ipc_folder, output_cap
        self.output_left = output_budget if output_budget is not None else 8 * output_cap
        self.sandbox = self.proc = self.kc = self.endpoints = None
        self.warm = warm
        self.starts = 0

    @property
    def wire(self) -> Wire:
        return self.endpoints.wire

    def start(self, timeout: float = 120.0) -> None:
        from .warm import WarmBroken

        self.starts += 1
        if self.warm is not None:
            try:
                return self._start(timeout, warm=True)
            except WarmBroken:
                self._stop_client()
                self.warm = None
        self._start(timeout, warm=False)

    def _start(self, timeout: float, warm: bool) -> None:
        from jupyter_client.blocking import BlockingKernelClient

        from .warm import WarmBroken

        self._close_endpoints()
        self.endpoints = KernelEndpoints(self.ipc_folder, f"k{self.starts}")
        fds = self.endpoints.kernel_fds
        if warm:
            self.warm.fork_kernel(self.endpoints.kernel_info(), fds)
        else:
            self.sandbox = self.make_sandbox()
            info = {**self.endpoints.kernel_info(), "fds": dict(zip((*CHANNELS, "runtime"), fds))}
            # the kernel's own stdout/stderr (banners, crash messages) are not the student's output
            self.proc = self.sandbox.popen([sys.executable, "-m", "lossgrader.zygote", "--kernel", json.dumps(info)],
                                           pass_fds=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoints.handed_over()
        self.kc = BlockingKernelClient()
        self.kc.load_connection_info(self.endpoints.client_info())
        self.kc.start_channels()
        # jupyter_client's wait_for_ready polls heartbeats every 0.2 s first: a
        # kernel_info reply, then a message on IOPub (so that no output is lost to a
        # subscription not yet connected) says the same sooner
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
            if not self.alive():
                self.shutdown_kernel()
                raise RuntimeError("the grading kernel did not start: it exited")
            if time.monotonic() > deadline:
                if warm:
                    self.warm.kill()
                    raise WarmBroken("the grading kernel did not answer")
                self.shutdown_kernel()
                raise RuntimeError("the grading kernel did not start: it did not answer")

    def alive(self) -> bool:
        if self.warm is not None:
            from .warm import WarmBroken
            try:
                return self.kc is not None and self.warm.kernel_alive()
            except WarmBroken:
                return False
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        """SIGINT by message (ipykernel sends it to its own process group; a signal to
        bwrap would end the sandbox)."""
        self.kc.control_channel.send(self.kc.session.msg("interrupt_request", content={}))

    def execute(self, code: str, timeout: float, silent: bool = False):
        """Run ``code``; returns (status, outputs, execution_count). status is "ok",
        "error" (the cell raised), "timeout" (interrupted after ``timeout`` s) or "dead"
        (the kernel exited or stopped answering)."""
        from nbformat.v4 import output_from_msg

        msg_id = self.kc.execute(code, silent=silent, store_history=not silent, allow_stdin=False,
                                 stop_on_error=False)
        deadline = time.monotonic() + timeout
        cap = min(self.output_cap, max(self.output_left, 0))
        outputs, size, truncated = [], 0, False
        status, count, interrupted = "ok", None, False
        try:
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
                    if size + weight > cap:
                        truncated = True
                        outputs.append(_note(BUDGET_NOTE if cap < self.output_cap else TRUNCATED_NOTE))
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
        finally:
            self.output_left -= size

    def _stop_client(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        self.kc = None

    def _close_endpoints(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()
            self.endpoints = None

    def shutdown_kernel(self) -> None:
        """End the kernel and everything it started (the warm sandbox is reset for the
        next start; a cold one is killed)."""
        self._stop_client()
        if self.warm is not None:
            from .warm import WarmBroken
            try:
                self.warm.reset(wipe_scratch=False)   # the kernel and all it started, /tmp, /dev/shm
            except WarmBroken:
                self.warm = None
        if self.sandbox is not None:
            try:
                self.sandbox.kill()
            except Exception:
                pass
        self.sandbox = self.proc = None

    def shutdown(self) -> None:
        self.shutdown_kernel()
        self._close_endpoints()


def _note(text=TRUNCATED_NOTE):
    from nbformat.v4 import new_output
    return new_output("stream", name="stdout", text=text)
