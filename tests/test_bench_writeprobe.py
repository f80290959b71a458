"""bench.writeprobe: every write + flush to a served process's stderr is timed, in the
thread that made it, and a write the stream holds up reads as waiting, not as CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Three texts on stderr, the way the log handler writes them (write, then flush): one
# small, one from another thread, and one whose flush sleeps 50 ms (a stream that stalls).
_WRITING = textwrap.dedent(
    """
    import sys, threading, time

    def main():
        sys.stderr.write("one\\n")
        sys.stderr.flush()
        t = threading.Thread(target=lambda: (sys.stderr.write("two\\n"), sys.stderr.flush()),
                             name="writer")
        t.start()
        t.join()
        sys.stderr.write("x" * 1000 + "\\n")
        time.sleep(0.05)
        sys.stderr.flush()

    if __name__ == "__main__":
        main()
    """
)


def test_probe_times_each_write_with_its_thread_and_its_wait(tmp_path: Path) -> None:
    (tmp_path / "writing.py").write_text(_WRITING)
    out = tmp_path / "writes.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "bench.writeprobe", str(out), "-m", "writing"],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert done.stderr.splitlines() == ["one", "two", "x" * 1000]  # still written
    writes = json.loads(out.read_text())["writes"]
    assert [(w[3], w[4]) for w in writes] == [
        (4, "MainThread"),
        (4, "writer"),
        (1001, "MainThread"),
    ]
    at, wall_ms, cpu_ms, _, _ = writes[2]
    assert wall_ms >= 50 > cpu_ms  # the stall is wall time, not CPU time
    assert writes[0][0] < writes[1][0] < at
