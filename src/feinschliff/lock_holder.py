"""Who holds a lock: the line a holder writes into its lock file, so that a process refused
by or waiting for the lock can name it (a hung holder, not a hang; `feinschliff gc` holding a
workdir for seconds, not a run holding it for hours)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path


def this_process() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def holder_line() -> str:
    """``pid N on HOST since <UTC time>: <program> <subcommand>`` (not the whole command
    line: a value typed into it stays out of a world-readable lock file)."""
    words = [Path(sys.argv[0]).name, *sys.argv[1:2]] if sys.argv and sys.argv[0] else []
    command = f": {' '.join(words)}" if words else ""
    return f"{this_process()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}{command}"
