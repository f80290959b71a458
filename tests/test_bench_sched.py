"""bench.sched against the real kernel: runqueue wait of a process tree, the autogroup claim.

Each process that changes a priority runs in a session of its own (its own autogroup), so
the test session's scheduling is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.sched import autogroup_nice, runqueue_seconds

ROOT = Path(__file__).resolve().parent.parent
SCHEDSTAT = Path("/proc/self/schedstat")

# A busy parent with a busy child: the two share one core when pinned to it.
_BUSY_PAIR = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    print(child.pid, flush=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass
    """
)


@pytest.mark.timeout(60)
def test_runqueue_wait_counts_the_whole_tree_sharing_one_core() -> None:
    if not SCHEDSTAT.exists():
        # A kernel without CONFIG_SCHED_INFO: nothing to read, and the column says 0.
        assert runqueue_seconds(os.getpid()) == 0.0
        return
    core = min(os.sched_getaffinity(0))
    with subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, "-c", _BUSY_PAIR],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        try:
            before = runqueue_seconds(proc.pid)
            started = time.monotonic()
            time.sleep(1.0)
            waited = runqueue_seconds(proc.pid) - before
            elapsed = time.monotonic() - started
        finally:
            os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
    # Two always-runnable processes on one core: whenever one runs, the other waits, so
    # together they wait about as long as the wall clock ran (more if others share it).
    assert waited >= 0.5 * elapsed, (waited, elapsed)
    assert runqueue_seconds(proc.pid) == 0.0  # gone: nothing to read


_CLAIM = textwrap.dedent(
    """
    import json
    from bench.sched import autogroup_nice, claimed_cores
    before = autogroup_nice()
    with claimed_cores() as words:
        inside = autogroup_nice()
    print(json.dumps({"before": before, "inside": inside, "after": autogroup_nice(),
                      "words": words}))
    """
)


def test_claimed_cores_raises_the_session_then_puts_it_back() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CLAIM],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
        start_new_session=True,  # its own autogroup: this session's is left alone
    )
    seen = json.loads(proc.stdout)
    assert seen["after"] == seen["before"]
    if seen["before"] is None:  # a kernel without autogroup scheduling: nothing to claim
        assert seen["words"] == "not claimed: no autogroup scheduling here"
        assert seen["inside"] is None
        return
    if seen["words"].startswith("not claimed"):  # no CAP_SYS_NICE: nothing changed
        assert "refused" in seen["words"]
        assert seen["inside"] == seen["before"]
    else:
        assert seen["inside"] == -20
        assert seen["words"] == f"the bench's session at autogroup nice -20 (was {seen['before']})"


# A run that claims the cores and then waits, with another process of its session (the
# session's autogroup outlives the run: its nice value is read through that process).
_CLAIM_THEN_WAIT = textwrap.dedent(
    """
    import signal, subprocess, time
    from bench.sched import autogroup_nice, claimed_cores
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as in a terminal, not under nohup
        signal.signal(sig, signal.SIG_DFL)
    peer = subprocess.Popen(["sleep", "60"])
    before = autogroup_nice()
    with claimed_cores() as words:
        print(peer.pid, before, words, flush=True)
        time.sleep(60)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_run_ended_by_a_signal_puts_the_session_back(sig: signal.Signals) -> None:
    """``timeout``, a cancelled CI job or a closed terminal end the run with a signal: the
    session's priority is put back all the same (it would outlive the run at -20)."""
    with subprocess.Popen(
        [sys.executable, "-c", _CLAIM_THEN_WAIT],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own autogroup: this session's is left alone
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # (the run's end closes it: never waits for ever)
        peer_pid, before, words = line.split(" ", 2)
        peer = int(peer_pid)
        try:
            group = Path(f"/proc/{peer}/autogroup")
            if words.startswith("the bench's session"):
                assert autogroup_nice(group) == -20
            proc.send_signal(sig)
            status = proc.wait(timeout=20)
            after = autogroup_nice(group)
            assert str(after) == before, (words, after)
            assert status == 128 + sig  # ended through SystemExit, its cleanups run
        finally:
            os.kill(peer, signal.SIGKILL)
