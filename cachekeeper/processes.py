"""Process identity: whether a process that wrote a lease or a use record still runs.

A pid means something only in its own pid namespace, on its own kernel boot, and only until it is
reused; an identity carries all of it, so that a process can be proven gone exactly, and otherwise
is never assumed gone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


def this_process() -> str:
    """Where this process's pid means something: boot id, pid namespace, pid and start time.

    Containers on one kernel share the boot id but not the pid namespace, and a pid is reused
    only with another start time, so a lease from this very namespace can be checked exactly.
    Empty where /proc cannot tell (not Linux): such leases only expire.
    """
    return _process_identity(os.getpid())


@functools.cache
def _process_identity(pid: int) -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    started = _start_time(pid)
    return f"{boot}|{namespace}|{pid}|{started}" if started else ""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): start time in ticks


def process_gone(process: str) -> bool:
    """True only when ``process`` ran in this pid namespace and no longer runs."""
    parts = process.split("|")
    mine = this_process().split("|")
    if len(parts) != 4 or len(mine) != 4 or parts[:2] != mine[:2] or not parts[2].isdigit():
        return False
    return _start_time(int(parts[2])) != parts[3]
