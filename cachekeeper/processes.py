"""Process identity: who wrote a lease or a use record, and whether that process is proven gone.

A pid means something only in its own pid namespace, on its own kernel boot, and only until it is
reused. Containers on one host may share a hostname (host networking) and even a pid (two
containers whose server is pid 1), so neither hostname nor pid says who a process is. An identity
carries all of it:

- a random **token**, made when the process starts (anew in a forked child): no two processes share
  one, so records named by it never collide;
- the **host**: the kernel's boot id (one per machine and boot: containers on one kernel share it),
  and the hostname, for people;
- the **pid namespace** (``pid:[4026531836]``), and the **pid** and its **start time** in it.

A process is *gone* only when that is proven: the observer runs on the same kernel boot and in the
same pid namespace, and the pid no longer runs or runs with another start time (it was reused).
Anything else (another machine, another container, a /proc that says nothing or belongs to
another namespace) proves nothing, and a process not proven gone may still run. Imports only the
standard library: this runs inside the server's boot.
"""

from __future__ import annotations

import os
import socket
import uuid

from .values import Value

_FIELDS = 6


class ProcessIdentity(Value):
    """Who a process is, as leases and use records carry it (``str()`` / ``parse``)."""

    token: str  # random, one per process: names its records
    boot: str  # the kernel's boot id; "" where /proc cannot tell
    namespace: str  # its pid namespace; "" where /proc cannot tell, or belongs to another namespace
    pid: int
    started: str  # start time of the pid, in clock ticks since boot; "" where /proc cannot tell
    host: str = ""  # the hostname, for people only: it proves nothing

    def __str__(self) -> str:
        return "|".join((self.boot, self.namespace, str(self.pid), self.started, self.token, self.host))

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity:
        """The identity ``str()`` wrote; one that proves nothing where ``text`` is not one. Reads
        the four fields written before identities had tokens, too."""
        parts = text.split("|", _FIELDS - 1)
        if len(parts) == 4:
            parts += ["", ""]
        if len(parts) != _FIELDS or not parts[2].isdigit():
            return cls("", "", "", 0, "", "")
        boot, namespace, pid, started, token, host = parts
        return cls(token, boot, namespace, int(pid), started, host)

    @property
    def provable(self) -> bool:
        """Whether anything can ever be proven about this process: where it ran is known."""
        return bool(self.boot and self.namespace and self.started and self.pid > 0)


_token: tuple[int, str] | None = None  # (pid it was made in, token)


def this_token() -> str:
    """The random token of this process: what names its records, read without touching /proc."""
    global _token
    if _token is None or _token[0] != os.getpid():  # a forked child is another process
        _token = (os.getpid(), uuid.uuid4().hex)
    return _token[1]


def this_process() -> ProcessIdentity:
    """This process's identity. Read afresh each time (a few small files): a process restored from
    a memory snapshot runs on another boot, maybe with another pid, and must say so."""
    pid = os.getpid()
    host = socket.gethostname()
    try:
        boot = _read_proc("/proc/sys/kernel/random/boot_id").strip()
        namespace = os.readlink("/proc/self/ns/pid")
        # /proc may be mounted for another pid namespace (``unshare --pid`` without --mount-proc):
        # then its pids are not ours, and nothing read there proves anything about our pids.
        if os.readlink("/proc/self") != str(pid):
            return ProcessIdentity(this_token(), boot, "", pid, "", host)
    except OSError:
        return ProcessIdentity(this_token(), "", "", pid, "", host)
    return ProcessIdentity(this_token(), boot, namespace, pid, _start_time(pid) or "", host)


def host_id() -> str:
    """This machine as an observer of time: the kernel's boot id, since every container on one
    kernel reads the same clock; the hostname where there is none to read."""
    mine = this_process()
    return f"boot {mine.boot}" if mine.boot else f"host {mine.host}"


def _start_time(pid: int) -> str | None:
    try:
        stat = _read_proc(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): start time in ticks


def _read_proc(path: str) -> str:
    """A small file of /proc, in one read: a boot reads two, three times each (Path.read_text would
    cost it 0.1 ms more)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.read(descriptor, 4096).decode()
    finally:
        os.close(descriptor)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's), or we cannot tell: either way, not gone
    return True


def process_gone(process: ProcessIdentity | str) -> bool:
    """True only when ``process`` is proven gone: it ran on this kernel boot, in this pid namespace,
    and its pid no longer runs, or runs with another start time (reused by another process)."""
    other = process if isinstance(process, ProcessIdentity) else ProcessIdentity.parse(process)
    if not other.provable:
        return False
    mine = this_process()
    if not (mine.boot and mine.namespace) or other.token == mine.token:
        return False
    if (other.boot, other.namespace) != (mine.boot, mine.namespace):
        return False  # another machine or another container: its pids are not ours to look up
    started = _start_time(other.pid)
    if started is not None:
        return started != other.started  # the pid runs: it is the same process only if it started then
    # No /proc entry: gone, unless the pid still runs (a /proc hiding other users' processes).
    return not _pid_runs(other.pid)
