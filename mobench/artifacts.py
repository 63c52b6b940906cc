"""A content-addressed cache of trained pieces (experts, value models, backbones, reward heads).

Each artifact is a folder ``<cache>/<kind>/<sha256 of its key>/`` built once: the key is a JSON
object of everything that determines the artifact (base model, data, objective, hyper-parameters,
seed, library versions) plus the code version of its build (:func:`code_version`: a hash of the source
of the build function and of every project function it reaches), so an edited fit never reads an
artifact that the old code built. A build writes into a temporary folder and is renamed into place only when
it finished, so a killed build never leaves a half artifact behind; a file lock keeps two processes
from building the same artifact twice.
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
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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


def _reached(obj: Any, seen: dict[str, str]) -> None:
    """Add the source of ``obj`` (a project function or class) and of the project objects it references."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, types.ModuleType):
        return
    if not _project_object(obj):
        return
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
    the standard library or installed distributions, whose versions keys record separately).
    """
    seen: dict[str, str] = {}
    for obj in objs:
        _reached(obj, seen)
    blob = json.dumps(sorted(seen.items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
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
    with _locked(final.parent / f".{final.name}.lock"):
        if (final / KEY_FILE).exists():  # built by another process while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            (tmp / KEY_FILE).write_text(json.dumps({"kind": kind, "key": key}, indent=2, sort_keys=True, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
