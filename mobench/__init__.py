"""mobench: a benchmark harness for multi-objective alignment methods."""

from mobench.hookspecs import hookimpl

__all__ = ["hookimpl"]
