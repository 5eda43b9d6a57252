#!/usr/bin/env python3
"""Run DBOS Transact on the peer benchmark shapes and print one JSON line per shape.

Shapes (same as `cargo bench --bench peer_shapes`):
  sequential  one workflow of N (default 1000) sequential trivial steps
  concurrent  128 workflows x 10 trivial steps, started concurrently
  recovery    1000 workflows x 6 steps, killed (SIGKILL) after step 3, then
              recovered by a fresh process; timed from DBOS(...) + DBOS.launch()
              until all 1000 are SUCCESS

Every shape runs in its own Python process (`--shape all` re-invokes this
script per shape) against its own freshly created system database, which is
dropped afterwards. stdout carries only the JSON lines; DBOS logs go to stderr.

DBOS 3.x has no application database unless a transaction datasource is
configured; these shapes use only @DBOS.step, so only the DBOS system database
is created.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from dbos import DBOS, DBOSConfig, SetWorkflowID

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
CONCURRENT_WORKFLOWS, CONCURRENT_STEPS = 128, 10
RECOVERY_WORKFLOWS, RECOVERY_STEPS, RECOVERY_KILL_AFTER = 1000, 6, 3
APP_VERSION = "peer-shapes"  # fixed, so the recovering process matches the killed one


# ---------------------------------------------------------------- databases

def db_url(base: str, dbname: str) -> str:
    """`base` with its database name replaced by `dbname`."""
    u = urlsplit(base)
    return urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))


@contextmanager
def fresh_database(admin_url: str, shape: str) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, always drop it."""
    name = f"dbos_bench_{shape}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield db_url(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def launch_dbos(sys_url: str) -> None:
    config: DBOSConfig = {
        "name": "peer-shapes",
        "system_database_url": sys_url,
        "application_version": APP_VERSION,
        "log_level": "WARNING",  # DBOS logs to stderr; keep it quiet anyway
    }
    DBOS(config=config)
    DBOS.launch()


def emit(shape: str, workflows: int, steps: int, seconds: float, note: str,
         steps_executed: int | None = None) -> None:
    executed = workflows * steps if steps_executed is None else steps_executed
    print(json.dumps({
        "system": "dbos", "shape": shape, "workflows": workflows,
        "steps_per_workflow": steps, "seconds": round(seconds, 6),
        "steps_per_s": round(executed / seconds, 1),
        "workflows_per_s": round(workflows / seconds, 2), "note": note,
    }), flush=True)


# ------------------------------------------------------ workflows and steps
# Registered at import time, so every process (including the recovering one)
# knows them before DBOS.launch().

@DBOS.step()
def trivial_step(i: int) -> int:
    return i


@DBOS.workflow()
def steps_workflow(n: int) -> int:
    return sum(trivial_step(i) for i in range(n))


@DBOS.step()
async def trivial_step_async(i: int) -> int:
    return i


@DBOS.workflow()
async def steps_workflow_async(n: int) -> int:
    total = 0
    for i in range(n):
        total += await trivial_step_async(i)
    return total


# Recovery side channel: per-process, in-memory counts of step executions.
# The killed child dumps its counts to a file before it is killed; the
# recovering process checks that steps 1-3 never ran again.
step_runs = [0] * (RECOVERY_STEPS + 1)
step_runs_lock = threading.Lock()
block_step4 = threading.Event()  # set => step 4 blocks forever (crash child)
ready_file = ""


def count_run(k: int) -> int:
    with step_runs_lock:
        step_runs[k] += 1
        return step_runs[k]


@DBOS.step()
def recovery_step(k: int, wf: int) -> int:
    runs = count_run(k)
    if k == RECOVERY_KILL_AFTER + 1 and block_step4.is_set():
        # Step 3's output was committed before this step body started.
        if runs == RECOVERY_WORKFLOWS:  # every workflow got here: tell parent
            with open(ready_file + ".tmp", "w") as f:
                json.dump(step_runs, f)
            os.replace(ready_file + ".tmp", ready_file)
        threading.Event().wait()  # block until SIGKILL
    return wf * 10 + k


@DBOS.workflow()
def recovery_workflow(wf: int) -> int:
    return sum(recovery_step(k, wf) for k in range(1, RECOVERY_STEPS + 1))


def recovery_expected(wf: int) -> int:
    return sum(wf * 10 + k for k in range(1, RECOVERY_STEPS + 1))


# ------------------------------------------------------------------ shapes

def run_sequential(admin_url: str, steps: int) -> None:
    with fresh_database(admin_url, "sequential") as url:
        try:
            launch_dbos(url)
            steps_workflow(10)  # warm-up, untimed
            t0 = time.perf_counter()
            result = steps_workflow(steps)
            dt = time.perf_counter() - t0
            assert result == steps * (steps - 1) // 2, result
        finally:
            DBOS.destroy()
    emit("sequential", 1, steps, dt, "sync @DBOS.workflow called directly; "
         "untimed 10-step warm-up workflow first")


def concurrent_threads(n: int) -> list[int]:
    """DBOS.start_workflow: each workflow runs on DBOS's thread pool."""
    handles = [DBOS.start_workflow(steps_workflow, CONCURRENT_STEPS) for _ in range(n)]
    return [h.get_result() for h in handles]


def concurrent_async(n: int) -> list[int]:
    """Async workflows on one event loop, awaited with asyncio.gather."""
    async def go() -> list[int]:
        return list(await asyncio.gather(
            *(steps_workflow_async(CONCURRENT_STEPS) for _ in range(n))))
    return asyncio.run(go())


def run_concurrent(admin_url: str, mode: str) -> None:
    modes = {"threads": concurrent_threads, "async": concurrent_async}
    expected = CONCURRENT_STEPS * (CONCURRENT_STEPS - 1) // 2
    timings: dict[str, float] = {}
    with fresh_database(admin_url, "concurrent") as url:
        try:
            launch_dbos(url)
            for name in (["threads", "async"] if mode == "best" else [mode]):
                modes[name](8)  # warm-up (threads / event loop), untimed
                t0 = time.perf_counter()
                results = modes[name](CONCURRENT_WORKFLOWS)
                timings[name] = time.perf_counter() - t0
                assert results == [expected] * CONCURRENT_WORKFLOWS
        finally:
            DBOS.destroy()
    best = min(timings, key=timings.__getitem__)
    how = {"threads": "sync workflows via DBOS.start_workflow (DBOS thread pool)",
           "async": "async workflows + asyncio.gather on one event loop"}[best]
    others = ", ".join(f"{k} {v:.3f}s" for k, v in timings.items())
    emit("concurrent", CONCURRENT_WORKFLOWS, CONCURRENT_STEPS, timings[best],
         f"{how}; best of [{others}], same process, each after an untimed "
         f"8-workflow warm-up")


def recovery_child(url: str, ready: str) -> None:
    """Start all workflows and block each in step 4 until the parent kills us."""
    global ready_file
    ready_file = ready
    block_step4.set()
    launch_dbos(url)
    for wf in range(RECOVERY_WORKFLOWS):
        with SetWorkflowID(f"rec-{wf:04d}"):
            DBOS.start_workflow(recovery_workflow, wf)
    threading.Event().wait()


def count_rows(c: psycopg.Connection, sql: str) -> int:
    return c.execute(sql).fetchone()[0]


def run_recovery(admin_url: str) -> None:
    n = RECOVERY_WORKFLOWS
    with fresh_database(admin_url, "recovery") as url, \
            tempfile.TemporaryDirectory() as tmp:
        # 1. Crash phase: a child runs every workflow into step 4, then SIGKILL.
        ready = os.path.join(tmp, "child_counts.json")
        child = subprocess.Popen(
            [sys.executable, __file__, "--recovery-child", url, ready],
            stdout=subprocess.DEVNULL)
        try:
            while not os.path.exists(ready):
                if child.poll() is not None:
                    raise RuntimeError(f"recovery child exited with {child.returncode}")
                time.sleep(0.05)
        finally:
            child.kill()  # SIGKILL: no clean shutdown of DBOS
            child.wait()
        with open(ready) as f:
            before = json.load(f)
        with psycopg.connect(url, autocommit=True) as c:
            pending = count_rows(c, "SELECT count(*) FROM dbos.workflow_status "
                                    "WHERE status = 'PENDING'")
            outputs = count_rows(c, "SELECT count(*) FROM dbos.operation_outputs")
        assert before[1:] == [n, n, n, n, 0, 0], before
        assert pending == n and outputs == n * RECOVERY_KILL_AFTER, (pending, outputs)

        # 2. Recovery phase (this process plays the restarted application).
        with psycopg.connect(url, autocommit=True) as poll:
            try:
                t0 = time.perf_counter()
                launch_dbos(url)  # recovers PENDING workflows of executor "local"
                while count_rows(poll, "SELECT count(*) FROM dbos.workflow_status "
                                       "WHERE status = 'SUCCESS'") < n:
                    time.sleep(0.005)
                dt = time.perf_counter() - t0
                done = DBOS.list_workflows(status="SUCCESS")
                outputs_after = count_rows(poll, "SELECT count(*) FROM dbos.operation_outputs")
            finally:
                DBOS.destroy()
    results = {w.workflow_id: w.output for w in done}
    assert results == {f"rec-{i:04d}": recovery_expected(i) for i in range(n)}
    assert step_runs[1:] == [0, 0, 0, n, n, n], step_runs
    assert outputs_after == n * RECOVERY_STEPS, outputs_after
    emit("recovery", n, RECOVERY_STEPS, dt,
         f"timed from DBOS(config)+DBOS.launch() (no warm-up) to {n} SUCCESS rows; "
         f"verified: before kill {pending} PENDING, {outputs} step outputs, step4 "
         f"entered {before[4]}x; after recovery steps 1-3 re-ran 0x, steps 4-6 ran "
         f"{step_runs[4]}/{step_runs[5]}/{step_runs[6]}x, all {n} results correct; "
         f"steps_per_s counts the {RECOVERY_STEPS - RECOVERY_KILL_AFTER} steps/workflow "
         f"run after restart", steps_executed=n * (RECOVERY_STEPS - RECOVERY_KILL_AFTER))


# -------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="all",
                   choices=["sequential", "concurrent", "recovery", "all"])
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    p.add_argument("--sequential-steps", type=int, default=1000)
    p.add_argument("--concurrent-mode", default="best",
                   choices=["best", "threads", "async"],
                   help="'best' times both and reports the faster")
    p.add_argument("--recovery-child", nargs=2, metavar=("SYS_URL", "READY_FILE"),
                   help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.recovery_child:
        recovery_child(*a.recovery_child)
    elif a.shape == "all":
        # One fresh interpreter per shape, so no DBOS state is shared.
        for shape in ("sequential", "concurrent", "recovery"):
            subprocess.run([sys.executable, __file__, "--shape", shape,
                            "--database-url", a.database_url,
                            "--sequential-steps", str(a.sequential_steps),
                            "--concurrent-mode", a.concurrent_mode], check=True)
    elif a.shape == "sequential":
        run_sequential(a.database_url, a.sequential_steps)
    elif a.shape == "concurrent":
        run_concurrent(a.database_url, a.concurrent_mode)
    else:
        run_recovery(a.database_url)


if __name__ == "__main__":
    main()
