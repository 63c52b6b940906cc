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
        ``register.method(name, factory, description="", **fixed)`` once per method. ``factory`` is
        usually a subclass of :class:`mobench.api.Method`. When it declares ``Options`` (a
        :class:`mobench.options.Options` dataclass: typed, documented fields, a preset per scale), the
        core builds it as ``factory(options)`` with options = ``Options.preset(scale)``, then ``fixed``
        (values this registration sets, e.g. an ablation's switch), then the user's ``-o KEY=VALUE``;
        else as ``factory()``, and ``-o`` is refused. ``mobench options NAME`` lists the options.
        Names follow :data:`mobench.plugins.NAME_RULE`. Import heavy libraries inside the methods, not
        at module import. Shared pieces (DPO experts, RL, decoding loop, LoRA merges) are public in
        :mod:`mobench.training`, :mod:`mobench.decoding`, :mod:`mobench.merging`, :mod:`mobench.models`.
    """


@hookspec
def register_tasks(register):
    """Register tasks.

    :param register: call ``register.task(name, load, objectives, description="", calibration=None)``.
        ``load(scale, context)`` returns a :class:`mobench.api.TaskInstance`; ``objectives`` names
        registered objectives, in order (that order is the order of preference weights); ``load`` gets
        them as ``context.objective(name, scale)`` and templates prompts with
        :func:`mobench.toolkit.chat_prompts`. ``calibration`` is the JSON file with the task's
        normalisation and reference point per scale (None: ``$MOBENCH_CACHE/calibration/NAME.json``);
        ``mobench calibrate --task NAME`` writes it and the core attaches it to every instance.
    """


@hookspec
def register_objectives(register):
    """Register objectives (scorers of responses).

    :param register: call ``register.objective(name, build, direction=1, description="")``.
        ``build(scale)`` returns a :class:`mobench.api.Objective` whose ``name`` and ``direction`` equal
        the registration's (the registry checks): +1 when higher is better, -1 when lower is better.
        A scorer that does not exist at a scale raises :class:`mobench.api.MobenchError` there.
        A ``build(scale, context=None)`` that takes a ``context`` keyword gets the run's
        :class:`mobench.api.RunContext` (``device``, ``dtype``: where its model runs, from ``--device``/``--dtype``).
    """


@hookspec
def register_commands(cli):
    """Add commands to the command line.

    :param cli: the ``click.Group`` behind ``mobench``; add commands with ``@cli.command()`` or
        ``cli.add_command(...)``. A command gets the plugin manager as ``click.get_current_context().obj["pm"]``
        (its ``.registry`` holds every registered method, task and objective). Raise
        :class:`mobench.api.MobenchError` for a user mistake: the CLI prints one line and exits 2.
    """
