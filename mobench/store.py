"""Results on disk: one folder a run, append-only rows, and a manifest that says how it was made.

Layout: ``<root>/<task>/<method>/<run-id>/{manifest.json, rows.jsonl, generations.jsonl}``.

Crash and concurrency safety, by construction rather than by luck:
- every line is written with one ``write(2)`` on an ``O_APPEND`` descriptor and fsynced, under an
  exclusive ``flock`` on the run's lock file, so two writers never interleave and a killed writer
  leaves at most one partial last line (skipped with a warning on reading);
- a grid point's generations are written before its row, each tagged with the attempt that wrote
  them, and the row is the commit: generations of an attempt without a row are ignored;
- before appending a row the writer checks, under the lock, the keys of the rows written so far, so a
  point is never written twice, even by two processes running the same command. The keys are an
  index kept per run folder object and brought up to date by reading only the bytes appended since
  the last look, so an append costs the same at row 10 and at row 10,000;
- runs of one command started side by side split the grid: before computing a point a runner claims it
  in ``claims.json`` (under the lock: owner, pid, host, expiry), and the others skip points claimed by a
  live owner. A claim ends when its point's row is written, when it expires, or at once when its owner
  was a process of this machine that no longer exists (a SIGKILL never leaves a point stranded);
- a run's manifest carries its status: ``running``, ``complete``, ``partial`` (ended with points
  missing), ``failed`` (with a one-line ``reason``) or ``interrupted`` (Ctrl-C or SIGTERM);
- files are created readable by the group and others as the umask allows (``0666 & ~umask``, like the
  rows), so a CI step running as another user can read the manifest and the store marker;
- everything written is strict JSON: a NaN or an infinity becomes null.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mobench.api import MobenchError

MARKER = ".mobench-store"
STORE_VERSION = 1
_IGNORABLE = {".gitkeep", "README.md", ".gitignore", MARKER}


STATUSES = ("running", "complete", "partial", "failed", "interrupted")


class CorruptLineWarning(UserWarning):
    """A line of a results file could not be parsed and was skipped."""


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


FILE_MODE = 0o666 & ~_umask()


def strict(value: Any) -> Any:
    """JSON-safe data: NaN and infinities become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(strict(obj), sort_keys=True, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write strict JSON to ``path`` through a temporary file and a rename (never a half file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; give it the mode of every other file in the store
        with os.fdopen(fd, "w") as fh:
            json.dump(strict(obj), fh, indent=2, sort_keys=True, default=str, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping (with a warning naming file and line) any corrupt line."""
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError:
                warnings.warn(f"{path}:{number}: corrupt line skipped", CorruptLineWarning, stacklevel=2)
                continue
            out.append(obj)
    return out


class Store:
    """A results folder holding any number of runs of any methods on any tasks."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check(self) -> None:
        """Raise unless the folder exists and is a mobench store."""
        if not self.root.is_dir():
            raise MobenchError(f"no results store at {self.root}: run `mobench run` first or pass --results DIR")
        if not (self.root / MARKER).exists():
            raise MobenchError(f"{self.root} is not a mobench results store (no {MARKER} file in it)")

    def ensure(self, create: bool = True) -> None:
        """Create the store (or accept an existing one); refuse a non-empty folder that is not a store.

        ``create=False`` only checks (nothing is written): the runner checks first and creates the store
        just before it writes the first run, so a command that fails earlier leaves no empty store behind.
        """
        if self.root.exists() and not self.root.is_dir():
            raise MobenchError(f"--results {self.root} is a file, not a folder")
        if (self.root / MARKER).exists():
            if create and not os.access(self.root, os.W_OK):
                raise MobenchError(f"the results store {self.root} is not writable")
            return
        # Hidden entries are ignored: a concurrent writer's half-made marker is one of them.
        if self.root.is_dir() and any(p.name not in _IGNORABLE and not p.name.startswith(".") for p in self.root.iterdir()):
            if (self.root / MARKER).exists():  # another process made it a store meanwhile
                return
            raise MobenchError(
                f"{self.root} is not a mobench results store and is not empty; pass an empty or new folder to --results"
            )
        if not create:
            return
        existing = next((p for p in [self.root, *self.root.parents] if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK):
            raise MobenchError(f"cannot create the results store {self.root}: {existing} is not writable")
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / MARKER, {"mobench_store": STORE_VERSION})

    def run(self, task: str, method: str, run_id: str) -> "RunDir":
        return RunDir(self.root / task / method / run_id)

    def runs(self, task: str | None = None) -> list["RunDir"]:
        """Every run folder with a manifest, optionally for one task."""
        self.check()
        pattern = f"{task}/*/*/manifest.json" if task else "*/*/*/manifest.json"
        return [RunDir(p.parent) for p in sorted(self.root.glob(pattern))]


class RunDir:
    """One run's folder: its manifest, rows and generations."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest_path = self.path / "manifest.json"
        self.rows_path = self.path / "rows.jsonl"
        self.generations_path = self.path / "generations.jsonl"
        self.lock_path = self.path / ".lock"
        self.claims_path = self.path / "claims.json"
        # The index of done keys: the keys of the rows read so far and where reading stopped.
        self._keys: set[str] = set()
        self._offset = 0
        self._inode: int | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's exclusive lock (between processes and threads alike)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest as a dict; MobenchError (one line) when it is unreadable or not a JSON object."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise MobenchError(f"{self.manifest_path}: unreadable manifest ({_one_line(exc)})") from None
        if not isinstance(manifest, dict):
            raise MobenchError(f"{self.manifest_path}: damaged manifest (a JSON {type(manifest).__name__}, not an object)")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with self.locked():
            write_json_atomic(self.manifest_path, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into the manifest under the lock."""
        with self.locked():
            manifest = self.read_manifest() if self.manifest_path.exists() else {}
            manifest.update(fields)
            write_json_atomic(self.manifest_path, manifest)
        return manifest

    def rows(self) -> list[dict[str, Any]]:
        """The committed rows, one per grid point (the first if a point somehow appears twice)."""
        seen, out = set(), []
        for row in read_jsonl(self.rows_path):
            key = row.get("preference_key")
            if not isinstance(key, str) or key in seen:
                continue
            seen.add(key)
            out.append(row)
        return out

    def done_keys(self) -> set[str]:
        """The keys of the committed rows (from the index: only the bytes appended since the last call are read)."""
        self._refresh_keys()
        return set(self._keys)

    def set_status(self, status: str, reason: str | None = None, **fields: Any) -> dict[str, Any]:
        """Record the run's status (one of STATUSES) and, for a failure, its one-line reason."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        extra = {"reason": _one_line(reason, 300)} if reason else {}
        with self.locked():
            manifest = self.read_manifest() if self.manifest_path.exists() else {}
            manifest.pop("reason", None)
            manifest.update(status=status, **extra, **fields)
            write_json_atomic(self.manifest_path, manifest)
        return manifest

    def claim(self, keys: list[str], owner: str, ttl: float, limit: int | None = None) -> list[str]:
        """Claim up to ``limit`` of ``keys`` (in order) for ``owner``: those not done and not claimed by another
        live owner. Returns the keys claimed; each claim lasts ``ttl`` seconds unless renewed."""
        now = time.time()
        with self.locked():
            self._refresh_keys()
            claims = self._read_claims()
            got = []
            for key in keys:
                if limit is not None and len(got) >= limit:
                    break
                if key in self._keys:
                    continue
                held = claims.get(key)
                if held and held.get("owner") != owner and _live(held, now):
                    continue
                got.append(key)
            me = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "expires": now + ttl}
            claims = {k: c for k, c in claims.items() if k not in self._keys and _live(c, now) and c.get("owner") != owner}
            claims.update({k: me for k in got})
            self._write_claims(claims)
        return got

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (and every stale one); the file goes when no claim is left."""
        now = time.time()
        with self.locked():
            if not self.claims_path.exists():
                return
            self._refresh_keys()
            claims = {k: c for k, c in self._read_claims().items()
                      if c.get("owner") != owner and k not in self._keys and _live(c, now)}
            self._write_claims(claims)

    def _read_claims(self) -> dict[str, dict[str, Any]]:
        try:
            claims = json.loads(self.claims_path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: c for k, c in claims.items() if isinstance(c, dict)} if isinstance(claims, dict) else {}

    def _write_claims(self, claims: dict[str, dict[str, Any]]) -> None:
        if claims:
            write_json_atomic(self.claims_path, claims)
        elif self.claims_path.exists():
            self.claims_path.unlink()

    def _refresh_keys(self) -> None:
        """Bring the key index up to date: read rows.jsonl from where the last look stopped to its last newline."""
        try:
            fh = open(self.rows_path, "rb")
        except FileNotFoundError:
            self._keys, self._offset, self._inode = set(), 0, None
            return
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_ino != self._inode or st.st_size < self._offset:  # replaced or truncated: start over
                self._keys, self._offset, self._inode = set(), 0, st.st_ino
            if st.st_size == self._offset:
                return
            fh.seek(self._offset)
            chunk = fh.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a partial last line (a writer killed mid-line) waits for its newline
        for raw in chunk[:end].splitlines():
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("preference_key"), str):
                self._keys.add(obj["preference_key"])
        self._offset += end

    def generations(self) -> list[dict[str, Any]]:
        """Generations of committed rows only (those of an attempt killed before its row are dropped)."""
        committed = {(r["preference_key"], _hashable(r.get("attempt"))) for r in self.rows()}
        return [g for g in read_jsonl(self.generations_path)
                if (_hashable(g.get("preference_key")), _hashable(g.get("attempt"))) in committed]

    def append_point(self, row: dict[str, Any], generations: list[dict[str, Any]]) -> bool:
        """Append one grid point's generations then its row; return False if the point already exists."""
        with self.locked():
            self._refresh_keys()
            if row["preference_key"] in self._keys:
                return False
            _append(self.generations_path, b"".join(_json_line(g) for g in generations))
            _append(self.rows_path, _json_line(row))
        return True


def _hashable(value: Any) -> Any:
    """A damaged field (a list, an object) compares as text instead of breaking a set lookup."""
    return value if isinstance(value, (str, int, float, type(None))) else json.dumps(value, sort_keys=True, default=str)


def _live(claim: dict[str, Any], now: float) -> bool:
    """Whether a claim still holds: not expired, and its owner alive when it was a process of this machine."""
    expires = claim.get("expires")
    if not isinstance(expires, (int, float)) or expires <= now:
        return False
    if claim.get("host") == socket.gethostname() and isinstance(claim.get("pid"), int):
        try:
            os.kill(claim["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
    return True


def _one_line(text: Any, limit: int = 500) -> str:
    """``text`` on one line, at most ``limit`` characters (long values are cut with an ellipsis)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _append(path: Path, payload: bytes) -> None:
    if not payload:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        # A previous writer killed mid-line leaves no newline at the end: start on a fresh line so the
        # partial line stays one corrupt line and never swallows ours.
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    payload = b"\n" + payload
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
