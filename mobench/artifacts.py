"""A content-addressed cache of trained pieces (experts, value models, backbones, reward heads).

Each artifact is a folder ``<cache>/<kind>/<sha256 of its key>/`` built once: the key is a JSON
object of everything that determines the artifact (base model, data, objective, hyper-parameters,
seed, library versions). A build writes into a temporary folder and is renamed into place only when
it finished, so a killed build never leaves a half artifact behind; a file lock keeps two processes
from building the same artifact twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def artifact_path(kind: str, key: dict[str, Any]) -> Path:
    """Where the artifact of this kind and key lives (whether or not it is built yet)."""
    return cache_root() / kind / key_digest(key)[:24]


def is_built(kind: str, key: dict[str, Any]) -> bool:
    """True when the artifact exists and is complete."""
    return (artifact_path(kind, key) / KEY_FILE).exists()


def get_or_build(kind: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return the artifact folder for ``key``, calling ``build(tmp_folder)`` first if it is missing."""
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
