"""Defenses run apart from the ground truth: each in a fresh process handed only its declared inputs.

The evaluator (the scheduler's worker) holds the cell: the test sets, the poison and cover masks,
the attack, its target and ratio. A defense never runs there. Each process that evaluates starts
one **defense server** (``python -m bench.isolation``), a clean interpreter that has imported the
framework and the plug-ins and nothing else: it never sees a cell. For every defense run the
server forks a child, whose conversation with the evaluator goes over a private socket:

1. evaluator -> child: the defense's name, module and params, the cell's public facts
   (:class:`~bench.defense.CellInfo`: classes, image shape, sizes, model name);
2. child -> evaluator: the defense's declaration (what it needs) after its own ``check``;
3. evaluator -> child: exactly the declared inputs, as copies (tensors, the backdoored model's
   weights, the model's architecture, the recipe, the budget, its derived seeds);
4. child -> evaluator: the returned model's weights and class, scores, flags, info, logs,
   checkpoints' weights, its measured cost and the steps of each training phase.

Every message is a ``torch.save`` byte string read back with ``weights_only=True`` on both sides:
tensors, numbers, strings, lists and dicts, never objects, so neither side can make the other run
code. The evaluator rebuilds the returned model from the cell's architecture; a model that does
not load into it is refused (``arch_ok`` in the record).

What the child cannot reach: no :class:`~bench.cell.Cell`, attack object or memo exists in its
memory (the server forked it before any cell existed, and it imports its own copy of every module);
its working directory is an empty temporary folder; its environment has no ``BENCH_*`` variable
(data root, cache, salt); it holds no file descriptor but its socket and the standard streams; its
seeds are derived with the evaluator's secret salt (:mod:`bench.protocol`). Its inputs are copies:
writing into them changes nothing for the next defense.

What it can still do, being code the user runs on the same account: look for files by guessing
paths, or read other processes' memory through ``/proc``. ``isolation="namespace"`` closes that
too on Linux, where ``unshare`` is permitted (root or user namespaces): the server starts in new
PID and mount namespaces, with the results, cache and data folders hidden under empty tmpfs mounts.
See docs/plugins.md ("Trust model").

Cost: one fork (~10-50 ms) and the copies of the inputs (~0.1-0.5 s for 50,000 CIFAR images) per
run; the server's start (~2-3 s, importing torch) once per worker process.
"""
from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

ISOLATION_MODES = ("process", "namespace")
_HEADER = struct.Struct("!Q")


class IsolationError(RuntimeError):
    """The defense process could not be started, or died without an answer."""


class RemoteDefenseError(RuntimeError):
    """The defense raised in its process; ``remote_type`` names the exception type."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback


# -- messages: torch.save bytes, loaded as data only ----------------------------------------------
def send(sock: socket.socket, obj: Any) -> None:
    from bench.files import torch_bytes

    data = torch_bytes(obj)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other side closed the connection")
        got += k
    return bytes(buf)


def recv(sock: socket.socket, what: str = "message") -> Any:
    from bench.files import load_data

    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return load_data(_recv_exact(sock, n), what)


def plain(value: Any) -> Any:
    """A value reduced to what a data-only message carries (tensors, numbers, strings, lists,
    dicts with string keys); numpy values become tensors or numbers, a subclass of a number or a
    string its base type (e.g. the budget's :class:`~bench.budget.PhaseEpochs`, an ``IntEnum``: the
    data-only loader refuses any other class), anything else its ``str``."""
    import numpy as np
    import torch

    if value is None:
        return value
    for base in (bool, int, float, str):   # bool before int: a bool is an int
        if isinstance(value, base):
            return base(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).clone()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


# -- the evaluator's side -------------------------------------------------------------------------
def _clean_env(hide: tuple[str, ...] = ()) -> dict:
    """The environment a defense process gets: the caller's, without any ``BENCH_*`` variable,
    the caller's working folder, or any value that names a hidden folder (results, cache, data)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("BENCH_") and k not in ("PWD", "OLDPWD") and not any(h in v for h in hide)}


class DefenseServer:
    """A clean interpreter that forks one child per defense run (see the module docstring)."""

    def __init__(self, mode: str = "process", hide: tuple[str, ...] = ()):
        if mode not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, got {mode!r}")
        self.mode, self.hide = mode, tuple(hide)
        self.runs = 0   # defense runs in progress on this server (it is not retired while any is)
        self._ctrl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._cwd = tempfile.mkdtemp(prefix="bench-defense-")
        # in a PID namespace the evaluator's pid means nothing: the control socket's end tells
        config = json.dumps({"sys_path": [p for p in sys.path if p],
                             "parent": os.getpid() if mode == "process" else None})
        cmd = [sys.executable, "-m", "bench.isolation", str(theirs.fileno())]
        if mode == "namespace":
            cmd = _namespace_command(cmd, self.hide)
        try:
            # the defense's prints go to the evaluator's stderr, away from its stdout
            stdout = sys.stderr.fileno() if _has_fileno(sys.stderr) else None
            self._proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], cwd=self._cwd, env=_clean_env(self.hide),
                                          stdin=subprocess.DEVNULL, stdout=stdout, close_fds=True)
        finally:
            theirs.close()
        self._ctrl.sendall(_HEADER.pack(len(config)) + config.encode())   # not on the command line
        ready = self._ctrl.recv(1)
        if ready != b"R":
            raise IsolationError(f"the defense server did not start (isolation {mode!r}); exit code "
                                 f"{self._proc.wait(timeout=10)}")
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def session(self) -> socket.socket:
        """A private socket to a freshly forked defense process."""
        with self._lock:
            self._ctrl.sendall(b"N")
            msg, fds, _, _ = socket.recv_fds(self._ctrl, 1, 1)
        if msg != b"F" or not fds:
            raise IsolationError("the defense server did not fork a process")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        try:
            self._ctrl.close()
            self._proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            self._proc.kill()
        shutil.rmtree(self._cwd, ignore_errors=True)


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False


def _namespace_command(cmd: list[str], hide: tuple[str, ...]) -> list[str]:
    """``cmd`` run in new PID and mount namespaces with the ``hide`` folders under empty tmpfs."""
    if not shutil.which("unshare"):
        raise IsolationError("isolation 'namespace' needs util-linux's `unshare` (not found)")
    mounts = " && ".join(f"mount -t tmpfs -o size=1m bench-hidden {_sh(p)}" for p in hide if os.path.isdir(p))
    inner = (mounts + " && " if mounts else "") + "exec " + " ".join(_sh(c) for c in cmd)
    return ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            "sh", "-c", inner]


def _sh(s: str) -> str:
    import shlex

    return shlex.quote(s)


_SERVERS: dict[tuple, DefenseServer] = {}
_SERVERS_LOCK = threading.Lock()


def server(mode: str = "process", hide: tuple[str, ...] = ()) -> DefenseServer:
    """This process's defense server for ``mode`` and ``hide`` (started on first use, restarted if
    it died). Starting one retires every other server with no run in progress: a process that
    evaluates several results folders in turn (a test session, a notebook) keeps one idle server,
    not one per folder it ever used. A server with a run in progress is never closed (in a PID
    namespace its exit would kill the run)."""
    with _SERVERS_LOCK:
        return _server(mode, hide)


def _server(mode: str, hide: tuple[str, ...]) -> DefenseServer:
    key = (mode, tuple(hide))
    srv = _SERVERS.get(key)
    if srv is None or not srv.alive():
        for other in [k for k, s in _SERVERS.items() if k != key and not s.runs]:
            _SERVERS.pop(other).close()
        srv = _SERVERS[key] = DefenseServer(mode, hide)
    return srv


@atexit.register
def _close_servers() -> None:
    with _SERVERS_LOCK:
        for srv in _SERVERS.values():
            srv.close()
        _SERVERS.clear()


def run_isolated(request: dict, provide_inputs: Callable[[dict], dict], *, mode: str = "process",
                 hide: tuple[str, ...] = ()) -> dict:
    """Run one defense in its own process. ``request`` names the defense and the cell's public
    facts; ``provide_inputs(declaration)`` builds the declared inputs once the child has said what
    it needs. Returns the child's result message (data only)."""
    with _SERVERS_LOCK:
        srv = _server(mode, hide)
        srv.runs += 1
    try:
        sock = srv.session()
        try:
            send(sock, request)
            reply = _answer(sock, "the defense's declaration")
            send(sock, provide_inputs(reply["declaration"]))
            return _answer(sock, "the defense's result")
        finally:
            sock.close()
    finally:
        with _SERVERS_LOCK:
            srv.runs -= 1


def _answer(sock: socket.socket, what: str) -> dict:
    try:
        msg = recv(sock, what)
    except EOFError as exc:
        raise IsolationError(f"the defense process died before sending {what} (killed, out of memory "
                             f"or crashed; see its output above)") from exc
    if not isinstance(msg, dict):
        raise IsolationError(f"{what} is not a message")
    if "error" in msg:
        raise _local_error(str(msg.get("type", "Error")), str(msg["error"]), str(msg.get("traceback", "")))
    return msg


def _local_error(remote_type: str, message: str, remote_traceback: str) -> Exception:
    """The defense's exception raised again here: as the suite's own type when it is one a caller
    handles (a refused configuration, a protocol breach, bad parameters, divergence), else as
    :class:`RemoteDefenseError`; both carry the remote type and traceback."""
    from bench.defense import DefenseConfigError, ProtocolError
    from bench.engine import DivergenceError
    from bench.registry import ParamsError

    known = {cls.__name__: cls for cls in (DefenseConfigError, ProtocolError, DivergenceError, ParamsError)}
    exc = known[remote_type](message) if remote_type in known \
        else RemoteDefenseError(remote_type, message, remote_traceback)
    exc.remote_type, exc.remote_traceback = remote_type, remote_traceback
    return exc


# -- the defense's side (runs in the server and its children) ---------------------------------------
def _serve(fd: int) -> None:
    ctrl = socket.socket(fileno=fd)
    # the empty folder the server started in is no one's: every child works in a folder of its
    # own, so it goes now, and a server that dies with a SIGKILLed evaluator leaves nothing behind
    here = os.getcwd()
    if os.path.basename(here).startswith("bench-defense-"):
        os.chdir(tempfile.gettempdir())
        try:
            os.rmdir(here)
        except OSError:
            pass
    (n,) = _HEADER.unpack(_recv_exact(ctrl, _HEADER.size))
    config = json.loads(_recv_exact(ctrl, n).decode())
    sys.path[:] = list(dict.fromkeys(config["sys_path"] + sys.path))
    import torch  # noqa: F401 - preloaded once, shared by every forked child

    from bench import engine  # noqa: F401
    from bench.registry import DEFENSES

    DEFENSES.names()   # imports the built-in and entry-point defenses
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children are reaped automatically
    if config.get("parent"):   # end with the evaluator, even when it is SIGKILLed
        from bench.watchdog import exit_with

        exit_with(config["parent"])
    ctrl.sendall(b"R")
    while True:
        try:
            if ctrl.recv(1) != b"N":
                break
        except OSError:
            break
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ctrl.close()
            theirs.close()
            code = 0
            try:
                _child(mine)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        mine.close()
        socket.send_fds(ctrl, [b"F"], [theirs.fileno()])
        theirs.close()
    os._exit(0)


def _child(sock: socket.socket) -> None:
    """One defense run: the conversation of the module docstring."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    workdir = tempfile.mkdtemp(prefix="bench-defense-run-")
    os.chdir(workdir)
    try:
        request = recv(sock, "the request")
        try:
            defense, cell_info = _prepare(request)
            decl = dict(defense.declaration())
            decl["reserve_fraction"] = float(defense.reserve_fraction(cell_info.reserve_fraction)) \
                if decl.get("needs_reserve") else None
            send(sock, {"declaration": plain(decl)})
        except Exception as exc:  # noqa: BLE001 - refused before compute
            send(sock, _error(exc))
            return
        inputs = recv(sock, "the defense's inputs")
        try:
            send(sock, _run(defense, cell_info, request, inputs))
        except Exception as exc:  # noqa: BLE001
            send(sock, _error(exc))
    finally:
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(workdir, ignore_errors=True)
        sock.close()


def _error(exc: BaseException) -> dict:
    return {"error": str(exc), "type": type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def _prepare(request: dict):
    import importlib

    from bench import engine
    from bench.defense import CellInfo
    from bench.registry import DEFENSES

    rt = request.get("runtime") or {}
    engine.configure(**{k: v for k, v in rt.items() if k != "threads"})
    if rt.get("threads"):
        import torch

        torch.set_num_threads(int(rt["threads"]))
    sys.path[:] = list(dict.fromkeys([*request.get("sys_path", []), *sys.path]))
    module = request["defense"].get("module")
    if module:
        importlib.import_module(module)   # registers a plug-in defined outside the packages
    defense = DEFENSES.create(request["defense"]["name"], **request["defense"]["params"])
    info = request["cell"]
    cell_info = CellInfo(int(info["num_classes"]), tuple(info["image_shape"]), int(info["n_train"]),
                         str(info["model_name"]), float(info["reserve_fraction"]), int(info["reserve_size"]))
    defense.check(cell_info)
    return defense, cell_info


def _run(defense, cell_info, request: dict, inputs: dict) -> dict:
    import torch

    from bench import engine
    from bench.budget import Budget
    from bench.cell import Architecture
    from bench.data import Split
    from bench.defense import DefenseContext
    from bench.engine import TrainConfig

    arch = Architecture.from_dict(inputs["architecture"])
    budget = Budget(**inputs["budget"])

    def split(prefix):
        if inputs.get(f"{prefix}_x") is None:
            return None
        return Split(inputs[f"{prefix}_x"], inputs.get(f"{prefix}_y"))

    model = None
    if inputs.get("model_state") is not None:
        model = arch.build()
        model.load_state_dict(inputs["model_state"])
        model.to(engine.device())
    checkpoints: list = []
    ctx = DefenseContext(
        defense, num_classes=cell_info.num_classes, image_shape=cell_info.image_shape, budget=budget,
        generator=torch.Generator().manual_seed(int(inputs["generator_seed"])),
        train_config=TrainConfig(**inputs["train_config"]), seed=int(inputs["seed"]),
        model_factory=lambda: arch.build(int(inputs["model_seed"])), train=split("train"), model=model,
        reserve=split("reserve"),
        checkpoint_cb=lambda tag, m: checkpoints.append({"tag": str(tag), **_weights(m)}))
    t0 = time.time()
    with engine.measure_cost(cell_info.n_train) as meter, engine.step_floor(budget):
        out = defense.run(ctx)
    wall = time.time() - t0
    from bench.registry import params_to_dict

    return {"model": _weights(out.model), "defense_params": plain(params_to_dict(defense.params)),
            "scores": plain(out.scores), "flags": plain(out.flags),
            "info": plain(out.info or {}), "logs": plain(ctx.logs), "sample_logs": plain(ctx.sample_logs),
            "checkpoints": checkpoints, "epochs_equiv": float(meter.epochs_equiv), "wall_s": wall,
            "cpu_s": time.process_time(),   # this process's (a forked child's count starts at zero)
            "phases": plain(meter.phases)}


def _weights(model) -> dict:
    """A model as data: its class's qualified name and its state dict on the CPU."""
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
