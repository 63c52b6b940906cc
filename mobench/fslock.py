"""Whether a folder gives the store and the artifact cache the cross-process file locks they rely on.

The store serialises appends and grid-point claims with ``flock`` on a lock file in each run folder, and
the artifact cache builds each key under an ``flock`` (see :mod:`mobench.store`, :mod:`mobench.artifacts`).
Jobs of a sweep run in other processes and, on a cluster, on other machines; that is safe only where the
folder's file system makes those locks hold between them. Two checks, at the start of a sweep:

- a real probe: this process locks a file in the folder and a second process must fail to take the same
  lock (absent locks: the second process gets it, or ``flock`` itself fails);
- the mount: ``/proc/mounts`` says which file system holds the folder; NFS mounted ``nolock`` or
  ``local_lock=flock|all`` and Lustre mounted ``localflock`` keep locks on one node (other machines do
  not see them); Lustre ``noflock`` has none. A probe between two processes of one node cannot see that.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MOUNTS = "/proc/mounts"

_PROBE = r"""
import fcntl, sys
fh = open(sys.argv[1], "a+")
try:
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held")
except OSError as err:
    print("error", err.errno)
else:
    print("taken")
"""


@dataclass(frozen=True)
class Mount:
    """One line of /proc/mounts: where, which file system, and its options."""

    point: str
    fstype: str
    options: tuple[str, ...]


def parse_mounts(text: str) -> list[Mount]:
    """The mounts of a /proc/mounts text (octal escapes such as ``\\040`` for a space decoded)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            point = fields[1].encode().decode("unicode_escape")
            out.append(Mount(point, fields[2], tuple(fields[3].split(","))))
    return out


def mount_of(path: str | Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (the longest mount point that is a prefix of its real path)."""
    real = os.path.realpath(path)
    best = None
    for m in mounts:
        prefix = m.point.rstrip("/") + "/"
        if (real == m.point or real.startswith(prefix) or m.point == "/") and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def node_local_reason(mount: Mount | None) -> str | None:
    """Why locks on ``mount`` do not reach other machines (None when nothing says so)."""
    if mount is None:
        return None
    opts = set(mount.options)
    if mount.fstype.startswith("nfs"):
        if "nolock" in opts:
            return f"NFS mounted nolock at {mount.point}: file locks are node-local"
        for o in opts:
            if o in ("local_lock=flock", "local_lock=all"):
                return f"NFS mounted {o} at {mount.point}: flock locks are node-local"
    if mount.fstype == "lustre":
        if "localflock" in opts:
            return f"Lustre mounted localflock at {mount.point}: file locks are node-local"
        if "noflock" in opts:
            return f"Lustre mounted noflock at {mount.point}: no file locks"
    return None


def probe(folder: str | Path) -> str | None:
    """Lock a file in ``folder`` here and try the same lock from a second process; None when it is refused
    there (locks work between processes), else why they do not."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".mobench-lock-probe.", dir=folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            return f"file locks fail in {folder} ({errno.errorcode.get(err.errno, err.errno)})"
        out = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True, timeout=60).stdout.split()
        if out[:1] == ["held"]:
            return None
        if out[:1] == ["taken"]:
            return f"file locks in {folder} do not hold between processes"
        return f"file locks fail in {folder} for a second process ({' '.join(out) or 'no answer'})"
    finally:
        os.close(fd)
        os.unlink(name)


def check(folder: str | Path, what: str, mounts_text: str | None = None) -> str | None:
    """One warning line when ``folder`` (the results store or the cache: ``what``) lacks cluster-wide locks."""
    problem = probe(folder)
    if problem is None:
        if mounts_text is None:
            try:
                mounts_text = Path(MOUNTS).read_text()
            except OSError:
                mounts_text = ""
        problem = node_local_reason(mount_of(folder, parse_mounts(mounts_text)))
        if problem is None:
            return None
        return (f"warning: the {what} {folder} is on {problem}: jobs on other machines could write one grid point "
                "or build one artifact twice; run them on one machine or use a folder with cluster-wide locks")
    return f"warning: the {what}: {problem}: concurrent jobs could write one grid point or build one artifact twice"
