"""pfkit.sandbox: verdicts for ordinary programs, early exits, limits, and the RL helper check_completions."""

import pytest

from pfkit import sandbox
from pfkit.sandbox import Job
from pfkit.tasks import CodeProblem

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0, 'neg'\n"


@pytest.fixture(scope="module")
def sb():
    with sandbox.Sandbox(workers=2) as s:
        yield s


def test_pass_fail_and_detail(sb):
    wrong = "def add(a, b):\n    return a - b\n"
    out = sb.run([Job(ADD, TESTS, "add"), Job(wrong, TESTS, "add"), Job("x = 1\n", "assert x == 1\n")])
    assert [v.status for v in out] == ["passed", "failed", "passed"]
    assert out[0].passed and not out[1].passed
    assert out[1].detail.startswith("AssertionError") and "candidate(1, 2) == 3" in out[1].detail


@pytest.mark.parametrize("early", ["import sys\nsys.exit(0)\n", "raise SystemExit\n", "import os\nos._exit(0)\n",
                                   "exit()\n", "quit(0)\n"])
def test_early_exit_is_a_failure(sb, early):
    v = sb.run([Job(ADD + early, TESTS, "add")])[0]
    assert v.status == "failed", v


def test_printing_a_fake_pass_does_not_pass(sb):
    prog = ADD + "print('passed')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)\n"
    v = sb.run([Job(prog, TESTS, "add")])[0]
    assert v.status == "failed" and v.stdout == "passed\n"


def test_timeout_and_memory(sb):
    out = sb.run([Job("while True:\n    pass\n", ""), Job("x = bytearray(4 << 30)\n", "")], timeout=1.0,
                 memory_mb=256)
    assert out[0].status == "timeout" and 1.0 <= out[0].seconds < 3.0
    assert out[1].status in ("failed", "crashed") and "MemoryError" in out[1].detail


def test_output_is_captured_and_capped(sb):
    v = sb.run([Job("import sys\nprint('x' * 10000)\nprint('err', file=sys.stderr)\n", "")], output_limit=100)[0]
    assert v.passed and v.stdout == "x" * 100 and v.stderr == "err\n"


def test_dedupe_runs_each_distinct_job_once(sb):
    prog = "import os\nprint(os.getpid())\n"
    out = sb.run([Job(prog, "")] * 3 + [Job(prog + "\n", "")])
    assert out[0] is out[1] is out[2] and out[3] is not out[0]


def test_check_completions_matches_program_of_each_problem():
    p = CodeProblem("t/0", "def add(a, b):\n", TESTS, "add", "    return a + b\n")
    out = sandbox.check_completions([p, p, p], ["    return a + b\n", "    return a * b\n", "    while 1: pass\n"],
                                    timeout=1.0)
    assert [v.status for v in out] == ["passed", "failed", "timeout"]
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        sandbox.check_completions([p, p], ["x"])


def test_forked_process_gets_its_own_workers(sb):
    """A fork of the owner (e.g. a DataLoader worker) must not talk over the owner's worker pipes."""
    import os

    assert sb.run([Job(ADD, TESTS, "add")])[0].passed
    owner_pids = [w.proc.pid for w in sb._workers]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            v = sb.run([Job(ADD, TESTS, "add")])[0]
            ok = v.passed and all(x is None or x.proc.pid not in owner_pids for x in sb._workers)
            sb.close()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert [x.proc.pid for x in sb._workers] == owner_pids and all(x.proc.poll() is None for x in sb._workers)
    assert sb.run([Job(ADD, TESTS, "add")])[0].passed


@pytest.mark.skipif(sandbox.default_isolation() != "namespace", reason="needs root")
def test_auto_isolation_degrades_to_process_with_a_warning():
    """If the namespace worker cannot start (here: an invalid tmpfs size), "auto" falls back and says so."""
    sb = sandbox.Sandbox(workers=1, isolation="auto", tmp_size_mb=-1)
    with pytest.warns(RuntimeWarning, match="falling back to process isolation"):
        out = sb.run([Job(ADD, TESTS, "add"), Job(ADD, TESTS.replace("== 3", "== 4"), "add")])
    sb.close()
    assert sb.isolation == "process" and [v.status for v in out] == ["passed", "failed"]
    assert out[0].meta["isolation"] == "process"
    with pytest.raises(sandbox.WorkerError):  # asked for explicitly: no silent downgrade
        sandbox.Sandbox(workers=1, isolation="namespace", tmp_size_mb=-1).start()
    with pytest.warns(RuntimeWarning, match="process isolation as root"):
        sandbox.Sandbox(workers=1, isolation="process")


def test_patching_the_harness_functions_cannot_turn_a_failure_into_a_pass(sb):
    prog = ADD.replace("a + b", "a - b") + (
        "import os\n_w = os.write\n"
        "os.write = lambda fd, data: _w(fd, data.replace(b'\\tfailed\\t', b'\\tpassed\\t'))\n")
    v = sb.run([Job(prog, TESTS, "add")])[0]
    assert v.status == "failed" and "AssertionError" in v.detail


def test_child_runs_unprivileged_with_limits(sb):
    prog = ("import os, resource\n"
            "status = open('/proc/self/status').read()\n"
            "nnp = [l for l in status.splitlines() if l.startswith('NoNewPrivs:')][0].split()[1]\n"
            "print(os.getuid() != 0, nnp, resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,\n"
            "      resource.getrlimit(resource.RLIMIT_CORE)[0], os.path.basename(os.getcwd()).startswith('job-'))\n")
    v = sb.run([Job(prog, "")], memory_mb=300)[0]
    assert v.passed, v
    root = sb.isolation == "namespace"
    assert v.stdout.split() == [str(root), "1", "300", "0", "True"]


def test_check_completions_mode_from_argument_or_problem_meta():
    p = CodeProblem("t/0", "def add(a, b):\n", TESTS, "add", "    return a + b\n")
    q = CodeProblem("t/1", "def add(a, b):\n", TESTS, "add", "    return a + b\n", {"sandbox_mode": "inprocess"})
    out = sandbox.check_completions([p, q], ["    return a + b\n"] * 2, timeout=2.0)
    assert [v.mode for v in out] == ["isolated", "inprocess"] and all(v.passed for v in out)
    forced = sandbox.check_completions([p, q], ["    return a + b\n"] * 2, mode="isolated", timeout=2.0)
    assert [v.mode for v in forced] == ["isolated", "isolated"]
    with pytest.raises(ValueError, match="mode must be one of"):
        sandbox.check_completions([p], ["x"], mode="fast")


def test_verdict_record_has_stable_columns(sb):
    ok, hack = sb.run([Job(ADD, TESTS, "add"), Job(ADD + "import os\nos._exit(0)\n", TESTS, "add")])
    assert sandbox.verdict_record(ok) == {"sandbox_status": "passed", "sandbox_hack": "",
                                          "sandbox_isolation": sb.isolation, "sandbox_mode": "isolated"}
    assert sandbox.verdict_record(hack)["sandbox_hack"] == "exit"
    assert sandbox.verdict_record(hack)["sandbox_status"] == "failed"


@pytest.mark.slow  # starts an unprivileged interpreter twice (~10-20 s on a busy machine)
def test_unprivileged_auto_isolation_is_userns_and_degrades_to_process_with_a_warning():
    from _sandbox_nonroot import run_unprivileged

    jobs = [Job(ADD, TESTS, "add"), Job(ADD, TESTS.replace("== 3", "== 4"), "add")]
    out, info = run_unprivileged(jobs, "auto")
    assert info["isolation"] == "userns" and [v.status for v in out] == ["passed", "failed"], (out, info)
    assert all(v.isolation == "userns" for v in out) and info["warnings"] == []
    # a worker that cannot set up its namespaces (here: an invalid tmpfs size) -> process, with a warning
    out, info = run_unprivileged(jobs, "auto", tmp_size_mb=-1)
    assert info["isolation"] == "process" and [v.status for v in out] == ["passed", "failed"], (out, info)
    assert all(v.isolation == "process" for v in out)
    assert any("userns isolation unavailable" in w and "falling back to process" in w for w in info["warnings"])
