"""``sidecar init`` into a directory others can write: they could swap the keyset it writes
(and forge every link) or the admin key. It refuses before writing anything, unless the
directory is sticky (like /tmp: others cannot replace what they do not own)."""

from __future__ import annotations

import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.security import casebook
from tests.test_cli_ops import sidecar

ARGS = ("--upstream", "http://127.0.0.1:3000", "--public-url", "http://127.0.0.1:8080")


def test_init_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    refused = 0
    for mode in (0o777, 0o775, 0o757):
        shared = tmp_path / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)  # exact bits, whatever the umask
        done = sidecar("init", str(shared), *ARGS, cwd=tmp_path)
        if done.returncode == 1 and "writable by other users" in done.stderr:
            refused += 1
        assert list(shared.iterdir()) == [], f"{mode:o}: nothing may be written"
    casebook.record("secrets", tried=3, through=3 - refused)
    assert refused == 3

    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    done = sidecar("init", str(sticky / "conf"), *ARGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((sticky / "conf").stat().st_mode) == 0o700
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    assert sidecar("init", str(own), *ARGS, cwd=tmp_path).returncode == 0


def test_init_that_fails_halfway_leaves_nothing_behind(tmp_path: Path) -> None:
    """The kernel refuses the config file (RLIMIT_FSIZE below its size, SIGXFSZ ignored so
    the write fails with EFBIG): the keyset and admin key already written go too, and a
    second try with room to write succeeds."""
    target = tmp_path / "conf"

    def small_files() -> None:  # runs in the child before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "init", str(target), *ARGS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_files,  # a limit for this child only
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "sidecar.yaml: cannot write" in done.stderr
    assert sorted(p.name for p in target.iterdir()) == [], "all three files or none"
    assert sidecar("init", str(target), *ARGS, cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in target.iterdir()) == ["admin.key", "keyset.json", "sidecar.yaml"]
