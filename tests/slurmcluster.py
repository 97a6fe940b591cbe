"""A real, throw-away single-node Slurm cluster for the tests (Debian's ``slurm-wlm`` and
``munge``).

``LocalSlurm().start()`` writes a ``slurm.conf`` for this host into a new temporary folder
(one node, ``localhost`` at 127.0.0.1, free ports, ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, no accounting), generates a munge key there, starts ``munged``,
``slurmctld`` and ``slurmd`` with their sockets, state, spool, logs and pid files in that
folder, and waits until the node is idle; ``stop()`` cancels what is still queued, stops the
three daemons by the pids they were started with (never by name) and deletes the folder.

Client commands (``sbatch``, ``squeue``, ``scancel``, ``scontrol``) find this cluster
through ``SLURM_CONF``: ``env()`` gives the variables to set (the tests set them for the
whole module, so that dask-jobqueue's own ``sbatch`` calls reach it too).

The daemons run as root, as Slurm's do on a real cluster: ``problem()`` says why the
cluster cannot start here (not root, packages missing) and the tests skip with that reason.
Nothing is written outside the temporary folder.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
PARTITION = "grading"
NODE = "localhost"


def problem():
    """Why a Slurm cluster cannot be started here, or None."""
    missing = [b for b in BINARIES if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if missing:
        return ("Slurm not installed (missing " + ", ".join(missing) + "): install Debian's `slurm-wlm` "
                "and `munge` (`apt-get install slurm-wlm munge`, as .ci/run does)")
    if os.geteuid() != 0:
        return "the Slurm daemons (slurmctld, slurmd, munged) of the Slurm tests must be started as root"
    return None


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class LocalSlurm:
    """One single-node Slurm cluster in a temporary folder; see the module docstring.

    ``cpus``: the CPUs the node declares (``config_overrides``: the node need not have them),
    ``memory_mb``: its memory; jobs are scheduled by CPU (``CR_CPU``)."""

    def __init__(self, cpus=2, memory_mb=16000, kill_wait=2):
        self.cpus, self.memory_mb, self.kill_wait = cpus, memory_mb, kill_wait
        self.folder = None
        self.procs = {}

    # ---------------------------------------------------------------- configuration
    def path(self, *parts):
        return os.path.join(self.folder, *parts)

    @property
    def conf(self):
        return self.path("slurm.conf")

    def env(self):
        return {"SLURM_CONF": self.conf}

    def _write_conf(self):
        ctld_port, slurmd_port = _free_ports(2)
        lines = [
            "ClusterName=lossgrader-test",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.path('munge', 'munge.socket')}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.path('state')}",
            f"SlurmdSpoolDir={self.path('spool')}",
            f"SlurmctldPidFile={self.path('slurmctld.pid')}",
            f"SlurmdPidFile={self.path('slurmd.pid')}",
            f"SlurmctldLogFile={self.path('slurmctld.log')}",
            f"SlurmdLogFile={self.path('slurmd.log')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            # the node declares what the tests need, whatever this machine has
            "SlurmdParameters=config_overrides",
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            "InactiveLimit=0",
            "MessageTimeout=10",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        # cgroup.conf is read even without cgroup plugins on some versions: an empty one
        with open(self.path("cgroup.conf"), "w") as fh:
            fh.write("CgroupPlugin=autodetect\n")

    # ---------------------------------------------------------------- daemons
    def _daemon(self, name, args):
        log = open(self.path(f"{name}.out"), "wb")
        try:
            proc = subprocess.Popen([_which(name)] + args, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **self.env()},
                                    start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def _wait(self, what, check, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                       + self.logs())
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Slurm: timed out waiting for {what}\n" + self.logs())

    def logs(self, tail=3000):
        out = []
        for name in ("munged.log", "munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"):
            try:
                with open(self.path(name), errors="replace") as fh:
                    text = fh.read()
            except OSError:
                continue
            if text.strip():
                out.append(f"--- {name}\n{text[-tail:]}")
        return "\n".join(out)

    def run(self, *args, check=True, timeout=60):
        """A Slurm client command against this cluster; its CompletedProcess."""
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env()})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def node_state(self):
        proc = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
        return proc.stdout.strip().lower() if proc.returncode == 0 else ""

    def start(self):
        problem_ = problem()
        if problem_:
            raise RuntimeError(problem_)
        # short paths: the munge socket path must stay under about 100 bytes
        self.folder = tempfile.mkdtemp(prefix="lgslurm-", dir="/tmp" if os.path.isdir("/tmp") else None)
        try:
            os.chmod(self.folder, 0o755)
            for sub in ("state", "spool"):
                os.makedirs(self.path(sub), mode=0o755)
            os.makedirs(self.path("munge"), mode=0o700)
            key = self.path("munge", "munge.key")
            with open(key, "wb") as fh:
                fh.write(os.urandom(1024))
            os.chmod(key, 0o400)
            self._write_conf()
            self._daemon("munged", ["--foreground", "--force", f"--socket={self.path('munge', 'munge.socket')}",
                                    f"--key-file={key}", f"--pid-file={self.path('munge', 'munged.pid')}",
                                    f"--log-file={self.path('munged.log')}",
                                    f"--seed-file={self.path('munge', 'munged.seed')}"])
            self._wait("munged's socket", lambda: os.path.exists(self.path("munge", "munge.socket")))
            self._daemon("slurmctld", ["-D", "-i", "-f", self.conf])
            self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0)
            self._daemon("slurmd", ["-D", "-N", NODE, "-f", self.conf])
            self._wait("the node to be idle", lambda: self.node_state() == "idle")
            return self
        except BaseException:
            self.stop()
            raise

    # ---------------------------------------------------------------- jobs
    def jobs(self, states="all"):
        """{job id: (name, state)} of the jobs Slurm still knows (``states``: squeue's -t)."""
        proc = self.run("squeue", "--noheader", f"--states={states}", "--format=%i|%j|%T", check=False)
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = (parts[1], parts[2])
        return out

    def queued(self):
        """Job ids squeue lists by default (pending, running, completing, ...)."""
        proc = self.run("squeue", "--noheader", "--format=%i", check=False)
        return sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())

    def job_field(self, job_id, field):
        """One field of ``scontrol show job`` (e.g. JobState), or None."""
        proc = self.run("scontrol", "show", "job", str(job_id), check=False)
        for word in proc.stdout.split():
            if word.startswith(field + "="):
                return word.split("=", 1)[1]
        return None

    def wait_for(self, what, check, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; squeue: {self.jobs()}")

    # ---------------------------------------------------------------- stop
    def stop(self):
        """Cancel every job, stop the daemons (by their pids) and delete the folder."""
        if self.folder is None:
            return
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--user=root", check=False, timeout=20)
                deadline = time.monotonic() + 20
                while self.queued() and time.monotonic() < deadline:
                    time.sleep(0.2)
            except Exception:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
