"""The kernel's part of the code sandbox (sandbox.py): a seccomp filter that takes user namespaces
away, and a memory cgroup for each block, so that a block and all its processes share one limit.

    filter_bytes = seccomp_filter("x86_64")    # for bwrap --seccomp FD
    cg = memory_cgroup(1024)                   # None where no memory cgroup can be made
    path = make_cgroup(cg, 1024); ...; remove_cgroup(path)
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import struct
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


def under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# The seccomp filter that takes user namespaces away (classic BPF over struct seccomp_data, as
# bubblewrap's --seccomp takes it). Hand-written because bubblewrap's own --disable-userns needs an
# unprivileged bwrap, and an unprivileged bwrap cannot bind an interpreter kept under root's 0700
# home (pyenv's /root/.pyenv). Numbers: linux/audit.h, arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h.
SECCOMP_ARCH = {  # platform.machine(): (AUDIT_ARCH_*, unshare, clone, clone3, setns)
    "x86_64": (0xC000003E, 272, 56, 435, 308),
    "aarch64": (0xC00000B7, 97, 220, 435, 268),
}
CLONE_NEWUSER = 0x10000000
BPF_LD, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06  # ld w abs; jmp k; ret k
RET_ALLOW, RET_KILL, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def seccomp_filter(machine: str) -> bytes:
    """The compiled filter: CLONE_NEWUSER in unshare/clone -> EPERM, setns -> EPERM, clone3 -> ENOSYS."""
    arch, unshare, clone, clone3, setns = SECCOMP_ARCH[machine]
    program = [  # (label, opcode, k, label if true, label if false); no label: the next instruction
        ("", BPF_LD, 4, None, None),  # the ABI of the call
        ("", BPF_JEQ, arch, "nr", "kill"),
        ("kill", BPF_RET, RET_KILL, None, None),  # another ABI (i386 calls on x86_64)
        ("nr", BPF_LD, 0, None, None),  # the system call's number
        ("", BPF_JGE, 0x40000000, "eperm", None),  # x86_64's x32 numbering
        ("", BPF_JEQ, unshare, "flags", None),
        ("", BPF_JEQ, clone, "flags", None),
        ("", BPF_JEQ, clone3, "enosys", None),
        ("", BPF_JEQ, setns, "eperm", "allow"),
        ("flags", BPF_LD, 16, None, None),  # args[0], its low 32 bits (little-endian)
        ("", BPF_JSET, CLONE_NEWUSER, "eperm", "allow"),
        ("allow", BPF_RET, RET_ALLOW, None, None),
        ("eperm", BPF_RET, RET_ERRNO | errno.EPERM, None, None),
        ("enosys", BPF_RET, RET_ERRNO | errno.ENOSYS, None, None),
    ]
    at = {label: i for i, (label, *_) in enumerate(program) if label}
    jump = lambda pc, label: 0 if label is None else at[label] - pc - 1  # noqa: E731
    return b"".join(struct.pack("=HBBI", op, jump(pc, yes), jump(pc, no), k)
                    for pc, (_, op, k, yes, no) in enumerate(program))


# A block's memory cgroup. Files by cgroup version: (limit, swap limit, where oom_kill is counted,
# kill the whole group on OOM). Written by hand: no maintained library makes a transient cgroup
# without systemd, and this is four files.
CGROUP_FILES = {
    2: ("memory.max", "memory.swap.max", "memory.events", "memory.oom.group"),
    1: ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control", None),
}
# /bin/sh moves itself into the block's cgroup, then becomes bwrap, so every process of the block
# starts inside it. The move costs ~10-15 ms a block: the kernel waits out an RCU grace period.
PLACE = 'echo $$ > "$0" && exec "$@"'


@dataclass(frozen=True)
class Cgroup:
    version: int  # 1 or 2
    parent: str  # a cgroup tutorforge runs in; each block's cgroup is made below it


def cgroup_candidates(mountinfo: str, cgroups: str) -> list[Cgroup]:
    """The memory cgroups a process is in, from its /proc/self/mountinfo and /proc/self/cgroup:
    v2's (if mounted) first, then v1's memory hierarchy (if mounted)."""
    mounts = {}  # version: (the hierarchy's path at the mount, the mount point)
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _, options = (rest.split() + ["", "", ""])[:3]
        if fstype == "cgroup2" or (fstype == "cgroup" and "memory" in options.split(",")):
            mounts.setdefault(2 if fstype == "cgroup2" else 1, fields.split()[3:5])
    found = []
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        version = 2 if controllers == "" else 1 if "memory" in controllers.split(",") else 0
        root, point = mounts.get(version, ("", ""))
        if root and under(path, root):
            found.append(Cgroup(version, os.path.normpath(os.path.join(point, os.path.relpath(path, root)))))
    return sorted(found, key=lambda c: -c.version)


def read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def make_cgroup(cg: Cgroup, limit_mb: int) -> str:
    """A fresh cgroup below cg.parent holding at most limit_mb, swap included; its path."""
    path = os.path.join(cg.parent, f"tutorforge-{os.getpid()}-{secrets.token_hex(4)}")
    limit, swap, _, group = CGROUP_FILES[cg.version]
    os.mkdir(path)
    try:
        settings = [(limit, limit_mb << 20), (swap, 0 if cg.version == 2 else limit_mb << 20), (group, 1)]
        for name, value in settings:
            if name and (name == limit or os.path.exists(os.path.join(path, name))):
                with open(os.path.join(path, name), "w") as fh:
                    fh.write(str(value))
    except OSError:
        remove_cgroup(path)
        raise
    return path


def remove_cgroup(path: str) -> None:
    """Remove a block's cgroup once the last of its processes has gone (they die with bwrap)."""
    for _ in range(300):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                break
            time.sleep(0.01)
    log.warning("could not remove the sandbox's cgroup %s (%s processes left)", path,
                len(read_text(os.path.join(path, "cgroup.procs")).split()))


def oom_kills(path: str, version: int) -> int:
    """How many processes of the block the kernel ended for going over the cgroup's limit."""
    found = re.search(r"^oom_kill (\d+)$", read_text(os.path.join(path, CGROUP_FILES[version][2])), re.M)
    return int(found.group(1)) if found else 0


def leftover_cgroups(cg: Cgroup | None, *, own: bool = True) -> list[str]:
    """Block cgroups below cg of a tutorforge that is gone, and (own=True) of this one."""
    left = []
    for entry in os.scandir(cg.parent) if cg else ():
        owner = re.fullmatch(r"tutorforge-(\d+)-[0-9a-f]+", entry.name)
        pid = int(owner.group(1)) if owner else 0
        if owner and ((own and pid == os.getpid()) or not os.path.exists(f"/proc/{pid}")):
            left.append(entry.path)
    return left


def memory_cgroup(probe_mb: int) -> Cgroup | None:
    """The first memory cgroup this process is in below which a block's own cgroup can be made (a
    probe of probe_mb is made, run in and removed), or None."""
    for cg in cgroup_candidates(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup")):
        controllers = read_text(os.path.join(cg.parent, "cgroup.subtree_control")).split()
        if cg.version == 2 and "memory" not in controllers:  # not delegated to this cgroup
            continue
        try:  # make one, start a process in it, remove it
            probe = make_cgroup(cg, probe_mb)
            try:
                subprocess.run(["/bin/sh", "-c", PLACE, os.path.join(probe, "cgroup.procs"), "/bin/true"],
                               check=True, capture_output=True, timeout=30)
            finally:
                remove_cgroup(probe)
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("sandbox: cgroup v%d at %s cannot be used for a memory limit: %s", cg.version, cg.parent, exc)
            continue
        for stale in leftover_cgroups(cg, own=False):  # left by a tutorforge that was killed
            remove_cgroup(stale)
        return cg
    return None
