"""Run ``python -m rnnlab ...`` in child processes, fast: the one CLI harness of the tests.

A cold ``python -m rnnlab train`` spends seconds of CPU importing torch and torch._dynamo (which
the optimiser pulls in) before it reads its first argument; the bad-input matrix and the crash
tests need dozens of processes. So a server process imports all that once and, per request,
forks a child that runs ``rnnlab/__main__.py`` exactly as ``python -m rnnlab`` does: its own
argv, working directory, environment, stdin/stdout/stderr, exit status and signal dispositions.
Each child starts from the server's pristine state (the server never runs any rnnlab code).

A cold runner (``shared_runner(cold=True)``, or ``RNNLAB_TEST_COLD=1`` for every request) runs
a real ``python -m rnnlab`` process instead; the results must be the same
(tests/test_bad_inputs.py checks one case both ways). Tests that need a fresh interpreter (hash
seeds, ``--version``) or a process that runs alongside their own work use it. ``run_batch`` runs
both kinds side by side and ``torchrun`` starts the CLI as several distributed processes.

A request may carry a ``hook``: Python source executed in the child before the CLI starts, used
to simulate crashes at exact points (e.g. SIGKILL inside ``os.replace``).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

COLD = os.environ.get("RNNLAB_TEST_COLD") == "1"

# One thread everywhere: on 2 shared cores, two OpenMP threads make tiny models much slower.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

_SERVER = r"""
import json, os, runpy, signal, sys, traceback
import torch, torch._dynamo  # the expensive imports, paid once for every child
import torch.optim, safetensors.torch, numpy, tqdm
import rnnlab, rnnlab.cli, rnnlab.api, rnnlab.training.runner, rnnlab.training.callbacks
try:  # drawn at the end of every CLI training run (curves.png)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot
except ImportError:
    pass

def child(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    # What a fresh interpreter has: Ctrl-C raises KeyboardInterrupt, SIGTERM kills.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["rnnlab", *request["args"]]
    code = 0
    try:
        if request.get("hook"):
            exec(request["hook"], {"__name__": "__hook__"})
        runpy.run_module("rnnlab", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()  # what the interpreter prints for an uncaught exception
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Result:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str


class Running:
    """A child that is running: signal it, then wait for its result."""

    def __init__(self, pid: int, finish, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self._finish = finish
        self._popen = popen
        self.result: Result | None = None

    def send_signal(self, signum: int) -> None:
        if self.result is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:  # it has just ended by itself
                pass

    def poll(self) -> bool:
        """True once the child has exited (without reaping it: ``wait`` still works)."""
        if self._popen is not None:
            return self._popen.poll() is not None
        try:
            waited, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not our child: the server reaps it; ask the kernel
            return not _alive(self.pid)
        return waited != 0

    def wait(self, timeout: float = 120.0) -> Result:
        if self.result is None:
            self.result = self._finish(timeout)
        return self.result


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return False


class CliRunner:
    """``start(args, cwd)`` / ``run(args, cwd)`` the CLI in a child process."""

    def __init__(self, cold: bool = COLD):
        self.cold = cold
        self._server: subprocess.Popen[bytes] | None = None
        self._pending = b""  # bytes read from the server beyond the last full line
        self._current: Running | None = None  # the server runs one child at a time
        self._outdir = Path(tempfile.mkdtemp(prefix="rnnlab-cli-"))
        self._count = 0
        atexit.register(self.close)

    def start_server(self) -> None:
        """Start the warm server now, without waiting: it imports while other tests run."""
        if not self.cold:
            self._ensure_server()

    def _ensure_server(self) -> subprocess.Popen[bytes]:
        if self._server is None or self._server.poll() is not None:
            env = {**os.environ, **CHILD_ENV}
            self._server = subprocess.Popen([sys.executable, "-c", _SERVER], env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._pending = b""
        return self._server

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)
        shutil.rmtree(self._outdir, ignore_errors=True)

    def start(self, args: list[str], cwd: Path, hook: str | None = None,
              env: dict[str, str] | None = None) -> Running:
        child_env = {**os.environ, **CHILD_ENV, **(env or {})}
        child_env.pop("RNNLAB_DEBUG", None)  # the one-line error messages are under test
        self._count += 1
        out = self._outdir / f"{self._count}.out"
        err = self._outdir / f"{self._count}.err"
        if self.cold:
            code = "import runpy, sys\n" + (hook or "") + (
                "\nsys.argv = ['rnnlab', *sys.argv[1:]]\n"
                "runpy.run_module('rnnlab', run_name='__main__', alter_sys=True)\n")
            command = ([sys.executable, "-m", "rnnlab", *args] if hook is None
                       else [sys.executable, "-c", code, *args])
            with open(out, "wb") as stdout, open(err, "wb") as stderr:
                popen = subprocess.Popen(command, cwd=cwd, env=child_env,
                                         stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

            def finish_cold(timeout: float) -> Result:
                try:
                    code = popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
                    raise
                return Result(code, _read(out), _read(err))

            return Running(popen.pid, finish_cold, popen)

        if self._current is not None and self._current.result is None:
            # A test that failed before waiting for its child: end that one first.
            self._current.send_signal(signal.SIGKILL)
            self._current.wait()
        server = self._ensure_server()
        request = {"args": [str(a) for a in args], "cwd": str(cwd), "env": child_env,
                   "stdout": str(out), "stderr": str(err), "hook": hook}
        server.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
        server.stdin.flush()
        pid = json.loads(self._readline(server, 120.0))["pid"]

        def finish_warm(timeout: float) -> Result:
            try:
                line = self._readline(server, timeout)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                line = self._readline(server, 30.0)
                running.result = Result(json.loads(line)["status"], _read(out), _read(err))
                raise
            return Result(json.loads(line)["status"], _read(out), _read(err))

        running = Running(pid, finish_warm)
        self._current = running
        return running

    def run(self, args: list[str], cwd: Path, hook: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120.0) -> Result:
        return self.start(args, cwd, hook, env).wait(timeout)

    def _readline(self, server: subprocess.Popen[bytes], timeout: float) -> str:
        # Raw reads on the descriptor: a buffered reader could hold a second line that select()
        # would then never report.
        deadline = time.monotonic() + timeout
        fd = server.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the CLI child did not finish in time")
                if selector.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise RuntimeError("the CLI server died")
                    self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode("utf-8")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


_shared: dict[bool, CliRunner] = {}


def shared_runner(cold: bool = COLD) -> CliRunner:
    """One warm runner (and server), and one cold runner, for the whole test run."""
    if cold not in _shared:
        _shared[cold] = CliRunner(cold=cold)
    return _shared[cold]


def run_batch(cold: dict[str, list[str]], warm: dict[str, list[str]], cwd: Path,
              env: dict[str, str] | None = None, timeout: float = 300.0) -> dict[str, Result]:
    """Start every ``cold`` command as a real process at once, run the ``warm`` ones one by one
    in children of the server meanwhile, and return all the results by name."""
    started = {name: shared_runner(cold=True).start(args, cwd, env=env)
               for name, args in cold.items()}
    results = {name: shared_runner().run(args, cwd, env=env, timeout=timeout)
               for name, args in warm.items()}
    results.update({name: running.wait(timeout) for name, running in started.items()})
    return results


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], env: dict[str, str] | None = None, nproc: int = 2,
             timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=NPROC -m rnnlab ARGS`` on this machine only; asserts success."""
    child_env = {**os.environ, **CHILD_ENV, **(env or {})}
    if sys.platform.startswith("linux"):
        child_env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}",
               "-m", "rnnlab", *args]
    done = subprocess.run(command, env=child_env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def wait_for(condition, running: Running, what: str, within: float = 90.0) -> None:
    """Poll ``condition()`` (the file system) until true; fail if the child ends first."""
    import pytest

    deadline = time.monotonic() + within
    while not condition():
        if running.poll():
            result = running.wait()
            pytest.fail(f"the process ended (status {result.returncode}) before {what}:\n"
                        f"{result.stderr[-2000:]}")
        if time.monotonic() > deadline:
            running.send_signal(signal.SIGKILL)
            running.wait()
            pytest.fail(f"{what} did not happen within {within} s")
        time.sleep(0.002)
