"""A content-addressed cache of trained pieces (experts, value models, backbones, reward heads).

Each artifact is a folder ``<cache>/<kind>/<sha256 of its key>/`` built once: the key is a JSON
object of everything that determines the artifact (base model, data, objective, hyper-parameters,
seed, library versions) plus the code version of its build (:func:`code_version`: a hash of the source
of the build function and of every project function it reaches), so an edited fit never reads an
artifact that the old code built. A build writes into a temporary folder and is renamed into place only when
it finished, so a killed build never leaves a half artifact behind; a file lock keeps two processes
from building the same artifact twice. A finished artifact is never deleted or overwritten (a reader may
have it open); every build is recorded in the cache's build log (``builds.jsonl``, :func:`build_log`).
"""

from __future__ import annotations

import dis
import fcntl
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from mobench.api import MobenchError

KEY_FILE = "mobench-artifact.json"


def cache_root() -> Path:
    """The mobench cache folder: ``$MOBENCH_CACHE`` or ``~/.cache/mobench``."""
    root = os.environ.get("MOBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mobench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_digest(key: dict[str, Any]) -> str:
    """The sha256 of the key's canonical JSON (sorted keys, no whitespace)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """Versions of the named distributions, for artifact keys and manifests."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} | {sys.base_prefix, sys.prefix}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _is_project_file(path: str | None) -> bool:
    """True for a source file of the project or of a plugin being developed (not the stdlib or site-packages)."""
    if not path or not path.endswith(".py"):
        return False
    real = os.path.realpath(path)
    return not real.startswith(_installed_roots()) and "site-packages" not in real and "dist-packages" not in real


def _project_object(obj: Any) -> bool:
    if not isinstance(obj, (types.FunctionType, type)) or getattr(obj, "__module__", None) == __name__:
        return False  # the cache's own machinery is not part of what an artifact is built by
    try:
        return _is_project_file(inspect.getsourcefile(obj))
    except (TypeError, OSError):
        return False


def _imported(code: types.CodeType, package: str | None) -> Iterator[Any]:
    """Objects a function imports in its body (``from x import y``): project modules only, imported if need be."""
    name = None
    instructions = list(dis.get_instructions(code))
    for n, ins in enumerate(instructions):
        if ins.opname == "IMPORT_NAME":
            name = ins.argval
            level = 0
            if n >= 2 and instructions[n - 2].opname == "LOAD_CONST" and isinstance(instructions[n - 2].argval, int):
                level = instructions[n - 2].argval
            try:
                name = importlib.util.resolve_name("." * level + name, package) if level else name
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError, AttributeError):
                name = None
                continue
            if spec is None or not _is_project_file(spec.origin):
                name = None
        elif ins.opname == "IMPORT_FROM" and name is not None:
            module = sys.modules.get(name) or importlib.import_module(name)
            attr = getattr(module, ins.argval, None)
            if attr is None:  # a submodule
                attr = sys.modules.get(f"{name}.{ins.argval}")
            if attr is not None:
                yield attr


#: Per project source file, what it held when this process first hashed code: (mtime_ns, size, sha256).
_SOURCE_STAMPS: dict[str, tuple[int, int, str]] = {}


def _file_stamp(path: str) -> tuple[int, int, str]:
    st = os.stat(path)
    with open(path, "rb") as fh:
        return st.st_mtime_ns, st.st_size, hashlib.sha256(fh.read()).hexdigest()


def _stamp_loaded_modules() -> None:
    """Remember the bytes of every project module loaded so far (first sight only)."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path not in _SOURCE_STAMPS and _is_project_file(path):
            try:
                _SOURCE_STAMPS[path] = _file_stamp(path)
            except OSError:
                pass


def _check_unchanged(path: str) -> None:
    """Refuse to hash a source file that changed on disk after this process first saw it.

    ``inspect.getsource`` reads the file as it is now, at the line numbers of the code that was loaded: after an
    edit it returns other lines (or the new code), so the key would describe neither the running code nor the
    file, and an artifact built by the old code could be filed under the new code's key.
    """
    recorded = _SOURCE_STAMPS.get(path)
    try:
        stat = os.stat(path)
    except OSError:
        return
    if recorded is None:
        _SOURCE_STAMPS[path] = _file_stamp(path)
        return
    if (stat.st_mtime_ns, stat.st_size) == recorded[:2]:
        return
    current = _file_stamp(path)
    if current[2] != recorded[2]:
        raise MobenchError(f"{path} changed on disk while this process was running: an artifact key would hash "
                           "the new source, not the code that runs; run the command again (finished grid points "
                           "are kept)")
    _SOURCE_STAMPS[path] = current  # touched, same bytes


def _reached(obj: Any, seen: dict[str, str]) -> None:
    """Add the source of ``obj`` (a project function or class) and of the project objects it references."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, types.ModuleType):
        return
    if not _project_object(obj):
        return
    try:
        _check_unchanged(inspect.getsourcefile(obj))
    except TypeError:
        pass
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        source = repr(obj)
    # Two lambdas of one function share a qualified name: the source tells them apart.
    ident = f"{obj.__module__}.{getattr(obj, '__qualname__', obj.__name__)}:{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    if ident in seen:
        return
    seen[ident] = source
    if isinstance(obj, type):
        for value in vars(obj).values():
            _reached(value.__func__ if isinstance(value, (staticmethod, classmethod)) else value, seen)
        return
    package = obj.__globals__.get("__package__")
    codes = [obj.__code__]
    while codes:
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in code.co_names:
            if name in obj.__globals__:
                _reached(obj.__globals__[name], seen)
        for target in _imported(code, package):
            _reached(target, seen)
    for cell in obj.__closure__ or ():
        try:
            _reached(cell.cell_contents, seen)
        except ValueError:  # an empty cell
            pass


def code_version(*objs: Any) -> str:
    """A hash of the source of ``objs`` and of every project function or class they reach.

    Reached: names a function reads from its module's globals, names it imports in its body, the
    functions in its closure, a class's methods; only objects defined in the project's own files (not
    the standard library or installed distributions, whose versions keys record separately). A project
    file that changed on disk since this process first saw it (its bytes, not only its time) is a
    :class:`MobenchError`: the source on disk is then not the code that runs.
    """
    _stamp_loaded_modules()
    seen: dict[str, str] = {}
    for obj in objs:
        _reached(obj, seen)
    blob = json.dumps(sorted(seen.items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Set (to anything but "" or "0") in a sweep's jobs: a build whose lock another process holds raises
#: :class:`ArtifactBusy` at once instead of waiting, so a job never idles on a GPU while another job trains.
NO_WAIT_ENV = "MOBENCH_ARTIFACT_NO_WAIT"
#: The cache's build log: one JSON line per artifact built (kind, key digest, pid, host, seconds).
BUILD_LOG = "builds.jsonl"


class ArtifactBusy(MobenchError):
    """Another process is building this artifact and the caller asked not to wait (see :data:`NO_WAIT_ENV`)."""

    def __init__(self, kind: str, path: Path):
        super().__init__(f"the {kind} artifact {path.name} is being built by another process")
        self.kind, self.path = kind, path


@contextmanager
def _locked(path: Path, kind: str = "", wait: bool = True) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ArtifactBusy(kind, path.parent / path.name[1:-len(".lock")]) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def artifact_path(kind: str, key: dict[str, Any], build: Callable[[Path], None] | None = None) -> Path:
    """Where the artifact of this kind and key lives (whether or not it is built yet).

    With ``build``, the key is completed by the build's :func:`code_version` (as :func:`get_or_build` does).
    """
    return cache_root() / kind / key_digest(_full_key(key, build))[:24]


def _full_key(key: dict[str, Any], build: Callable[[Path], None] | None) -> dict[str, Any]:
    return key if build is None else {**key, "code": code_version(build)}


def is_built(kind: str, key: dict[str, Any], build: Callable[[Path], None] | None = None) -> bool:
    """True when the artifact exists and is complete (pass the same ``build`` as to :func:`get_or_build`)."""
    return (artifact_path(kind, key, build) / KEY_FILE).exists()


def get_or_build(kind: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return the artifact folder for ``key``, calling ``build(tmp_folder)`` first if it is missing.

    The folder's name hashes ``key`` and the code version of ``build`` (its source and the project code it
    reaches), recorded beside the key in the artifact's ``mobench-artifact.json``.
    """
    key = _full_key(key, build)
    final = artifact_path(kind, key)
    if (final / KEY_FILE).exists():
        return final
    wait = os.environ.get(NO_WAIT_ENV, "") in ("", "0")
    with _locked(final.parent / f".{final.name}.lock", kind, wait):
        if (final / KEY_FILE).exists():  # built by another process while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            started = time.perf_counter()
            build(tmp)
            (tmp / KEY_FILE).write_text(json.dumps({"kind": kind, "key": key}, indent=2, sort_keys=True, default=str))
            if _publish(tmp, final):
                _log_build(kind, final, time.perf_counter() - started)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> bool:
    """Rename the finished build ``tmp`` into place; False when a finished artifact is already there.

    A finished artifact is never deleted or overwritten (another process may be reading it): where file
    locks do not hold across machines two builders can finish, and the loser discards its own copy. An
    unfinished folder (no key file: a build of an old version killed half way) is renamed aside first.
    """
    for _ in range(3):
        try:
            os.rename(tmp, final)  # atomic; fails when ``final`` is a non-empty folder
            return True
        except OSError:
            if (final / KEY_FILE).exists():
                return False
            aside = final.parent / f".{final.name}.stale-{os.getpid()}-{time.time_ns()}"
            try:
                os.rename(final, aside)
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
    os.rename(tmp, final)
    return True


def _log_build(kind: str, final: Path, seconds: float) -> None:
    """Append one line to the cache's build log (one ``write`` on an ``O_APPEND`` descriptor: lines never mix)."""
    import socket

    line = json.dumps({"kind": kind, "artifact": final.name, "pid": os.getpid(), "host": socket.gethostname(),
                       "seconds": round(seconds, 3), "finished_at": time.time()}, sort_keys=True) + "\n"
    fd = os.open(cache_root() / BUILD_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def build_log() -> list[dict[str, Any]]:
    """Every build recorded in the cache's build log, oldest first (what was trained, by which process)."""
    path = cache_root() / BUILD_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
