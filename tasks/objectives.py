"""Built-in objectives, registered as plugins; the scorers themselves live in tasks/_objectives.py."""

from __future__ import annotations

from functools import partial

from mobench import hookimpl


def _build(name: str, scale: str = "tiny"):
    from mobench.tasks._objectives import build_objective

    return build_objective(name, scale)


@hookimpl
def register_objectives(register):
    from mobench.tasks._objectives import DESCRIPTIONS, DIRECTIONS

    for name, direction in DIRECTIONS.items():
        register.objective(name, partial(_build, name), direction=direction, description=DESCRIPTIONS[name])
