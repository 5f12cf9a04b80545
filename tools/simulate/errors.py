"""The simulation's one error: what `python -m tools.simulate` prints as `error: ...` (exit 1).

Its own module so every part of the package (population, federation, cli) can raise it without
importing the others."""

from __future__ import annotations


class SimulationError(RuntimeError):
    """The simulation cannot go on (coordinator did not start, a step failed); says why."""
