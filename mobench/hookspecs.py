"""The mobench plugin contract.

A plugin is a module (or any object) with functions decorated by ``mobench.hookimpl`` whose names
match the hooks below. Third parties expose it through an entry point in the group ``mobench``::

    [project.entry-points.mobench]
    my_method = "my_package.plugin"

Built-in methods and tasks are registered through these very hooks, with the same checks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mobench")
hookimpl = pluggy.HookimplMarker("mobench")


@hookspec
def register_methods(register):
    """Register steering methods.

    :param register: a :class:`mobench.plugins.Register`; call
        ``register.method(name, factory, description="")`` once per method. ``factory(**options)``
        must return an object with ``name``, ``prepare(task, context)``,
        ``generate(prompts, preferences)`` and ``provenance()`` (see :class:`mobench.api.Method`).
        Import heavy libraries inside the factory, not at module import.
    """


@hookspec
def register_tasks(register):
    """Register tasks.

    :param register: call ``register.task(name, load, objectives, description="")``.
        ``load(scale, context)`` returns a :class:`mobench.api.TaskInstance`; ``objectives`` names the
        objectives the task scores, in order (that order is the order of preference weights).
    """


@hookspec
def register_objectives(register):
    """Register objectives (scorers of responses).

    :param register: call ``register.objective(name, build, direction=1, description="")``.
        ``build(scale)`` returns a :class:`mobench.api.Objective`.
    """


@hookspec
def register_commands(cli):
    """Add commands to the command line.

    :param cli: the ``click.Group`` behind ``mobench``; add commands with ``@cli.command()``.
    """
