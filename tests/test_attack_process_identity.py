"""Attack: process identity (audit finding 4). Containers may share a hostname (host networking)
and even a pid (each server pid 1 of its own pid namespace); "is this process alive?" must never
be answered from hostname and pid.

Two servers run as pid 1 of two pid namespaces under one hostname (``unshare --pid --fork
--mount-proc``): they must hold two use records, each saying who it is, and a prune in a third
namespace must keep what both use, also once one of them has exited. The proof rules themselves:
a process is gone only when proven (same kernel boot, same pid namespace, and its pid no longer
runs or runs with another start time); anything unknown is not gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cachekeeper
from cachekeeper import uses
from cachekeeper.processes import ProcessIdentity, process_gone, this_process
from cachekeeper.runtime import PRIVATE
from cachekeeper.store import Root

from .adversary import examples
from .helpers import REPO_ROOT, Server, run_cli

NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
PRUNE = ("--older-than", "0s", "--yes", "--json")


def _namespaces_or_skip() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot start processes in pid namespaces of their own")
    tried = subprocess.run([*NAMESPACE, "sh", "-c", "echo $$"], capture_output=True, text=True)
    if tried.returncode != 0 or tried.stdout.strip() != "1":
        pytest.skip(f"cannot make a pid namespace here (needs root or user namespaces): {tried.stderr.strip()}")


@pytest.fixture(autouse=True)
def no_uses_left():
    yield
    uses.release_all()


def _records(root: Path, key: str) -> dict[str, dict]:
    directory = Root(root).uses_dir("compile", key)
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def _in_namespace(code: str) -> ProcessIdentity:
    """The identity a process of a fresh pid namespace reports for itself (the namespace is gone
    once it exits: its pid 1 ended)."""
    done = subprocess.run(
        [*NAMESPACE, sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    return ProcessIdentity.parse(done.stdout.strip())


# --- two pid-1 servers on one hostname ----------------------------------------------------------


@pytest.mark.slow
def test_two_pid_1_servers_on_one_hostname_hold_two_uses_and_a_prune_elsewhere_keeps_both(root):
    _namespaces_or_skip()
    first = Server(root, prefix=NAMESPACE)
    second = Server(root, prefix=NAMESPACE)
    try:
        assert first.entered["pid"] == second.entered["pid"] == 1  # both pid 1
        assert first.entered["host"] == second.entered["host"] == socket.gethostname()
        assert (first.status(), second.status()) == ("build", "private")  # one builds; the other does not wait
        first.ask("write 0")
        assert first.ask("finish")["published"] == {"compile": True}
        third = Server(root, prefix=NAMESPACE)  # a hit, also pid 1 with the same hostname
        try:
            assert third.status() == "hit" and third.entered["pid"] == 1
            assert third.ask("read")["files"] == 1
            key = first.key()
            records = _records(root, key)
            assert len(records) == 2  # one per server, named by its token: no two share one
            identities = sorted((ProcessIdentity.parse(r["process"]) for r in records.values()), key=str)
            assert [i.pid for i in identities] == [1, 1]
            assert identities[0].namespace != identities[1].namespace and identities[0].token != identities[1].token
            assert {f"{i.token}.json" for i in identities} == set(records)

            # The builder exits (its use ends); the hit still serves: a prune in a third pid
            # namespace (where pid 1 is the prune itself) must keep the artifact.
            first.stop()
            assert len(_records(root, key)) == 1
            pruned = subprocess.run(
                [*NAMESPACE, sys.executable, "-m", "cachekeeper", "--root", str(root), "prune", *PRUNE],
                capture_output=True,
                text=True,
                cwd=REPO_ROOT,
                env={**os.environ},
            )
            assert pruned.returncode == 0, pruned.stderr
            answer = json.loads(pruned.stdout)
            assert answer["removed"] == [] and [k["key"] for k in answer["kept"]] == [key]
            assert any("in use by" in reason for reason in answer["reasons"][key])
            # And from the host's pid namespace, where pid 1 is another process altogether.
            assert run_cli("--root", str(root), "prune", "--older-than", "0s", "--yes").returncode == 0
            assert (root / "compile" / key / "part-0").is_file()
            assert third.ask("check")["missing"] == []
        finally:
            third.stop()
    finally:
        first.kill()
        second.kill()
    # Every server gone, by a clean exit: nothing uses the key, and it goes.
    assert run_cli("--root", str(root), "prune", "--older-than", "0s", "--yes").returncode == 0
    assert not (root / "compile" / first.key()).exists()


@pytest.mark.slow
def test_a_builder_in_another_pid_namespace_is_never_proven_gone(root):
    """Its lease cannot be taken over at once, even after it died: from here its pid means nothing."""
    _namespaces_or_skip()
    builder = Server(root, prefix=NAMESPACE, lease_ttl=600)
    try:
        assert builder.status() == "build" and builder.entered["pid"] == 1
        builder.ask("write 0")
        key = builder.key()
    finally:
        builder.kill()  # pid 1 killed: its namespace and every pid in it are gone
    with cachekeeper.activate(root, layers=["compile"], on_busy="cold") as ck:
        assert ck.layers["compile"].status == PRIVATE  # who held the lease cannot be proven gone
    assert (root / "compile" / key / "part-0").is_file()


# --- the proof rules ----------------------------------------------------------------------------


def test_this_process_is_not_gone():
    me = this_process()
    assert me.provable and me.pid == os.getpid() and me.host == socket.gethostname()
    assert not process_gone(me) and not process_gone(str(me))
    assert ProcessIdentity.parse(str(me)) == me


def test_a_process_that_ended_on_this_machine_is_gone_once_proven():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cachekeeper.processes import this_process; print(this_process(), flush=True); "
            "import sys; sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    identity = ProcessIdentity.parse(child.stdout.readline().strip())
    assert identity.pid == child.pid and identity.token != this_process().token
    assert not process_gone(identity)  # it runs
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert process_gone(identity)  # same boot, same namespace, and its pid runs no more


def test_a_reused_pid_with_another_start_time_is_gone():
    me = this_process()
    reused = me._replace(token="an earlier process", started=str(int(me.started) - 1))
    assert process_gone(reused)


def test_a_process_of_another_pid_namespace_is_never_gone():
    _namespaces_or_skip()
    other = _in_namespace("from cachekeeper.processes import this_process; print(this_process())")
    assert other.provable and other.pid == 1 and other.boot == this_process().boot
    assert other.namespace != this_process().namespace
    assert not process_gone(other)  # it exited, and its namespace is gone: still, nothing here proves it
    # Nor does a pid of ours that does not run prove anything about theirs.
    assert not process_gone(other._replace(pid=2**22 - 1))


def test_a_process_of_another_machine_is_never_gone():
    me = this_process()
    assert not process_gone(me._replace(token="elsewhere", boot="another machine", pid=2**22 - 1))


def test_without_a_proc_of_its_own_nothing_is_proven():
    """``unshare --pid`` without ``--mount-proc``: /proc shows another namespace's pids, so a process
    there cannot say who it is, nor prove any other process gone."""
    _namespaces_or_skip()
    code = (
        "import json, os\n"
        "from cachekeeper.processes import this_process, process_gone\n"
        "me = this_process()\n"
        "dead = me._replace(token='dead', namespace='x', pid=2**22 - 1)\n"
        "print(json.dumps({'me': str(me), 'pid': os.getpid(), 'proves': process_gone(dead)}))\n"
    )
    done = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    me = ProcessIdentity.parse(answer["me"])
    assert answer["pid"] == 1 and me.namespace == "" and not me.provable and not answer["proves"]


@pytest.mark.parametrize(
    "record",
    [
        "",
        "garbage",
        "host:1",
        "|||",
        "||1|",
        "b|pid:[1]|x|1|t|h",
        f"{this_process().boot}||{2**22 - 1}|1|t|h",  # no namespace
        f"{this_process().boot}|{this_process().namespace}|{2**22 - 1}||t|h",  # no start time
        f"|{this_process().namespace}|{2**22 - 1}|1|t|h",  # no boot id
        f"{this_process().boot}|{this_process().namespace}|0|1|t|h",  # no pid
    ],
)
def test_a_record_that_says_too_little_is_never_gone(record):
    assert not process_gone(record)


@examples(200)
@given(st.text(max_size=80) | st.lists(st.text(max_size=20), max_size=7).map("|".join))
def test_any_text_as_an_identity_is_parsed_and_proves_nothing_it_should_not(text):
    identity = ProcessIdentity.parse(text)
    gone = process_gone(text)
    if gone:  # only a full identity of this machine and namespace can ever be proven gone
        me = this_process()
        assert identity.provable and (identity.boot, identity.namespace) == (me.boot, me.namespace)


def test_records_are_named_by_a_token_that_a_forked_child_does_not_share(root):
    registration = uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: another process, another token, another record
        os.close(read)
        child = uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
        os.write(write, child.path.name.encode())
        child.release()
        os._exit(0)
    os.close(write)
    child_name = os.read(read, 200).decode()
    os.waitpid(pid, 0)
    assert child_name and child_name != registration.path.name
    registration.release()


def test_a_use_record_names_its_process(root):
    uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
    [record] = _records(root, "compile-a-0123456789abcdef").values()
    assert ProcessIdentity.parse(record["process"]) == this_process()
    assert f"{this_process().token}.json" in _records(root, "compile-a-0123456789abcdef")
    [use] = uses.users(Root(root), "compile", "compile-a-0123456789abcdef")
    assert uses.mine(use)
