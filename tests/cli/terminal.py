"""Run `instructforge` as a user does: in a terminal (a pseudo-terminal), through pipes, or from elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.procs import ROOT

COLUMNS = 120
# What the console script runs (pyproject.toml [project.scripts]), on this checkout's code whatever is installed.
INSTRUCTFORGE = [sys.executable, "-c", "from app.cli import main; raise SystemExit(main())"]
BAR_STATE = re.compile(r"^\S.* +\d+%\|")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any IF_ setting, able to import this checkout from any directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IF_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def in_terminal(
    args: list[str], *, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> tuple[int, str]:
    """Exit status and everything written to a COLUMNS-wide terminal (stdout and stderr both)."""
    master, slave = pty.openpty()
    # A real terminal has a size; a fresh pseudo-terminal reports 0 x 0.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        [*INSTRUCTFORGE, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", errors="replace")


def through_pipes(
    args: list[str], *, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INSTRUCTFORGE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def bar_states(output: str) -> list[str]:
    """Every drawing of a progress bar, in order (a bar is redrawn in place after a carriage return)."""
    lines = re.split(r"[\r\n]+", output)
    return [line.rstrip() for line in lines if BAR_STATE.match(line)]
