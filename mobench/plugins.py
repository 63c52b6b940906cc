"""The plugin manager and the registry it fills.

``get_plugin_manager()`` builds a fresh manager each call (no global state): built-in plugins, then
entry points in the group ``mobench``, then loose files from ``--plugins-dir``. A plugin that fails to
import, implements an unknown hook, registers a malformed object or a duplicate name is recorded in
``Registry.errors`` (one line each) and everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from mobench import hookspecs
from mobench.api import MethodSpec, MobenchError, ObjectiveSpec, TaskSpec

BUILTIN_PACKAGES = ("mobench.methods", "mobench.tasks")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: The rule every method, task and objective name follows (checked at registration).
NAME_RULE = "lower-case letters, digits, '-', '_' or '.', starting with a letter or digit"


def _takes_context(build: Callable[..., Any]) -> bool:
    """Whether an objective factory accepts a ``context`` keyword (or ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "context" or p.kind is p.VAR_KEYWORD for p in params)


@dataclass
class PluginInfo:
    """Where a plugin came from: its name, origin (builtin / entry point / file) and version."""

    name: str
    origin: str
    version: str
    hooks: list[str] = field(default_factory=list)


@dataclass
class Registry:
    """Everything the plugins registered, with the plugin that registered each item."""

    methods: dict[str, MethodSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    objectives: dict[str, ObjectiveSpec] = field(default_factory=dict)
    owner: dict[tuple[str, str], str] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def _get(self, kind: str, table: dict[str, Any], name: str):
        if name in table:
            return table[name]
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(table)) or "none"
        raise MobenchError(f"unknown {kind} {name!r}{hint} (known: {known})")

    def method(self, name: str) -> MethodSpec:
        """The registered method ``name``; a MobenchError with "did you mean" when unknown."""
        return self._get("method", self.methods, name)

    def task(self, name: str) -> TaskSpec:
        """The registered task ``name``; a MobenchError with "did you mean" when unknown."""
        return self._get("task", self.tasks, name)

    def objective(self, name: str) -> ObjectiveSpec:
        """The registered objective ``name``; a MobenchError with "did you mean" when unknown."""
        return self._get("objective", self.objectives, name)

    def build_objective(self, name: str, scale: str = "tiny", context: Any = None):
        """Build the registered objective ``name`` at ``scale``; its name and direction must match the registration.

        A factory that takes a ``context`` keyword gets the run's :class:`mobench.api.RunContext` (its device and
        dtype: where a scorer's model runs); a factory ``build(scale)`` is called as before.
        """
        spec = self.objective(name)
        built = spec.build(scale, context=context) if context is not None and _takes_context(spec.build) else spec.build(scale)
        if getattr(built, "name", None) != spec.name or getattr(built, "direction", None) != spec.direction:
            raise MobenchError(
                f"objective {name!r} was registered with direction {spec.direction:+d} but its build returned "
                f"name {getattr(built, 'name', None)!r}, direction {getattr(built, 'direction', None)!r}"
            )
        return built

    def plugin_version(self, plugin: str) -> str:
        """The version of a loaded plugin ("unknown" when it has none)."""
        info = self.plugins.get(plugin)
        return info.version if info else "unknown"


class Register:
    """The object a plugin's ``register_*`` hook receives; it checks what the plugin hands over."""

    def __init__(self, registry: Registry, plugin: str):
        self._registry = registry
        self._plugin = plugin

    def _add(self, kind: str, table: dict[str, Any], spec: Any, name: str, fn: Callable) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{kind} name {name!r} breaks the naming rule: {NAME_RULE}")
        if not callable(fn):
            raise TypeError(f"{kind} {name!r}: {fn!r} is not callable")
        if name in table:
            first = self._registry.owner[(kind, name)]
            self._registry.errors.append(
                f"plugin {self._plugin!r}: {kind} {name!r} is already registered by plugin {first!r}; kept the first"
            )
            return
        table[name] = spec
        self._registry.owner[(kind, name)] = self._plugin

    def method(self, name: str, factory: Callable, description: str = "", **fixed: Any) -> None:
        """Register a method built by ``factory(options)`` (or ``factory()`` when it declares no ``Options``).

        ``fixed``: option values this registration sets (an ablation under its own name); checked now.
        """
        from mobench.options import options_class

        cls = options_class(factory)
        if fixed:
            if cls is None:
                raise TypeError(f"method {name!r}: fixed option values {sorted(fixed)} but {factory!r} declares no Options")
            cls().replace(fixed, owner=name)  # unknown keys or bad values: the plugin is reported broken
        self._add("method", self._registry.methods, MethodSpec(name, factory, description, dict(fixed)), name, factory)

    def task(self, name: str, load: Callable, objectives: tuple[str, ...] | list[str], description: str = "",
             calibration: str | Path | None = None) -> None:
        """Register a task loaded by ``load(scale, context)`` that scores the named objectives, in weight order.

        ``calibration``: the JSON file holding its normalisation and reference point (None: the cache folder).
        """
        objectives = tuple(objectives)
        if not objectives or not all(isinstance(o, str) for o in objectives):
            raise TypeError(f"task {name!r}: objectives must be a non-empty list of names")
        spec = TaskSpec(name, load, objectives, description, Path(calibration) if calibration is not None else None)
        self._add("task", self._registry.tasks, spec, name, load)

    def objective(self, name: str, build: Callable, direction: int = 1, description: str = "") -> None:
        """Register an objective built by ``build(scale)``; direction +1 maximise, -1 minimise."""
        if direction not in (1, -1):
            raise TypeError(f"objective {name!r}: direction must be +1 or -1, not {direction!r}")
        self._add("objective", self._registry.objectives, ObjectiveSpec(name, build, direction, description), name, build)


def _mobench_version() -> str:
    try:
        return metadata.version("mobench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _load_file(path: Path):
    name = f"mobench_dir_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the registry that the ``register_*`` hooks filled."""

    registry: Registry


def get_plugin_manager(plugins_dir: str | Path | None = None, entry_points: bool = True) -> PluginManager:
    """Build a fresh plugin manager: built-ins, entry points (group ``mobench``), then ``plugins_dir``."""
    pm = PluginManager("mobench")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    pm.registry = registry

    def add(obj: Any, name: str, origin: str, version: str) -> None:
        try:
            pm.register(obj, name=name)
            pm.check_pending()
        except Exception as exc:  # a plugin with unknown hooks or bad signatures
            if pm.is_registered(obj):
                pm.unregister(obj)
            registry.errors.append(f"plugin {name!r} ({origin}) is broken and was skipped: {_one_line(exc)}")
            return
        registry.plugins[name] = PluginInfo(name, origin, version)

    version = _mobench_version()
    for package in BUILTIN_PACKAGES:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            modname = f"{package}.{info.name}"
            try:
                module = importlib.import_module(modname)
            except Exception as exc:
                registry.errors.append(f"built-in plugin {modname!r} failed to import: {_one_line(exc)}")
                continue
            if _has_hooks(module):  # public helper modules of a built-in package are not plugins
                add(module, modname, "builtin", version)

    if entry_points:
        for ep in sorted(metadata.entry_points(group="mobench"), key=lambda e: e.name):
            dist_version = ep.dist.version if ep.dist is not None else "unknown"
            dist_name = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
            try:
                obj = ep.load()
            except Exception as exc:
                registry.errors.append(f"plugin {ep.name!r} ({dist_name}) failed to load: {_one_line(exc)}")
                continue
            add(obj, ep.name, f"entry point of {dist_name}", dist_version)

    if plugins_dir is not None:
        folder = Path(plugins_dir)
        if not folder.is_dir():
            raise MobenchError(f"--plugins-dir {folder} is not a folder")
        for path in sorted(folder.glob("*.py")):
            try:
                module = _load_file(path)
            except Exception as exc:
                registry.errors.append(f"plugin file {str(path)!r} failed to import: {_one_line(exc)}")
                continue
            add(module, f"file:{path.name}", f"file {path}", "file")

    _fill(pm, registry)
    return pm


def _has_hooks(module: Any) -> bool:
    return any(callable(v) and hasattr(v, "mobench_impl") for v in vars(module).values())


def _fill(pm: pluggy.PluginManager, registry: Registry) -> None:
    # Each implementation is called on its own so that one broken plugin cannot hide the others.
    for hook_name in ("register_objectives", "register_tasks", "register_methods"):
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order
            register = Register(registry, impl.plugin_name)
            try:
                impl.function(register)
            except Exception as exc:
                registry.errors.append(f"plugin {impl.plugin_name!r} failed in {hook_name}: {_one_line(exc)}")
            if impl.plugin_name in registry.plugins:
                registry.plugins[impl.plugin_name].hooks.append(hook_name)
