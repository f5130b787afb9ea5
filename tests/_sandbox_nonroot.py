"""Run sandbox jobs as an unprivileged user, to test the non-root isolation modes (userns, process).

As root (this machine): a private mount namespace in which the interpreter, if it lives under a directory
others cannot enter (e.g. /root/.pyenv), is exposed alone, then ``setpriv`` drops to ``nobody`` with no
capabilities and runs a small driver. As another user: the driver runs directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from pfkit.sandbox import Job, Verdict

DRIVER = r"""
import dataclasses, json, os, sys, warnings
from pfkit import sandbox
spec = json.load(sys.stdin)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        sb = sandbox.Sandbox(workers=spec["workers"], isolation=spec["isolation"], **spec["opts"])
        out = sb.run([sandbox.Job(**j) for j in spec["jobs"]], timeout=spec["timeout"], memory_mb=spec["memory_mb"])
    except sandbox.WorkerError as e:
        print(json.dumps({"refused": str(e), "uid": os.getuid()}))
        sys.exit(0)
alive = all(w.proc.poll() is None for w in sb._workers if w is not None)
sb.close()
print(json.dumps({"uid": os.getuid(), "alive": alive, "isolation": sb.isolation,
                  "warnings": [str(w.message) for w in caught], "verdicts": [dataclasses.asdict(v) for v in out]}))
"""

NOBODY = 65534


def _blocked_prefix() -> tuple[str, str] | None:
    """(directory others cannot enter, its child holding the interpreter), e.g. ("/root", "/root/.pyenv")."""
    parts = os.path.realpath(sys.base_prefix).split(os.sep)[1:]
    cur = "/"
    for i, part in enumerate(parts[:-1]):
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & 0o001:
            return cur, os.path.join(cur, parts[i + 1])
    return None


def run_unprivileged(jobs: list[Job], isolation: str, *, timeout: float = 2.0, memory_mb: int = 512,
                     workers: int = 2, **opts) -> tuple[list[Verdict], dict]:
    """Verdicts of ``jobs`` run by a non-root user's Sandbox(isolation=..., **opts); skips where that cannot
    run. The dict has the pool's final ``isolation``, its ``warnings`` and whether its workers are ``alive``."""
    spec = json.dumps({"isolation": isolation, "timeout": timeout, "memory_mb": memory_mb, "workers": workers,
                       "opts": opts, "jobs": [dataclasses.asdict(j) for j in jobs]})
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": "/tmp", "LANG": "C.UTF-8"}
    stage = None
    if os.geteuid() == 0:
        if not (shutil.which("unshare") and shutil.which("setpriv")):
            pytest.skip("needs util-linux unshare and setpriv to drop root in a test")
        drop = f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --inh-caps=-all"
        blocked = _blocked_prefix()
        if blocked:
            top, child = blocked
            stage = tempfile.mkdtemp(prefix="pfkit-nonroot-")
            os.chmod(stage, 0o755)
            script = (f"mount --bind {child} {stage} && mount -t tmpfs -o mode=755,size=1m tmpfs {top} && "
                      f"mkdir -p {child} && mount --bind {stage} {child} && {drop} \"$0\" -c \"$1\"")
        else:
            script = f"{drop} \"$0\" -c \"$1\""
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, DRIVER]
    else:
        cmd = [sys.executable, "-c", DRIVER]
    try:
        proc = subprocess.run(cmd, input=spec, capture_output=True, text=True, env=env, cwd="/",
                              timeout=120 + len(jobs) * (timeout + 2))
    finally:
        if stage:
            os.rmdir(stage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["uid"] != 0
    if "refused" in result:
        pytest.skip(f"the kernel refuses {isolation} isolation to an unprivileged user: {result['refused']}")
    return [Verdict(**v) for v in result["verdicts"]], result
