"""Per-slot vectorised diffusion solvers for the FIFO / MIGA queue engine (see ``base.py``)."""

from __future__ import annotations

from ..errors import require
from .base import Solver
from .ddim import DDIMSolver
from .flow import FLOW_SCHEDULES, FlowEulerSolver, FlowUniPCSolver, flow_schedule

SOLVERS: dict[str, type[Solver]] = {
    "ddim": DDIMSolver,
    "flow_euler": FlowEulerSolver,
    "flow_unipc": FlowUniPCSolver,
}


def make_solver(name: str, num_steps: int, **kw) -> Solver:
    """Build the solver registered as ``name`` with ``num_steps`` levels; ``kw`` go to its constructor.

    Raises ``ConfigError`` (a ``ValueError``) for an unknown ``name``.
    """
    require(name in SOLVERS, "name", f"one of {', '.join(map(repr, SOLVERS))}", name)
    return SOLVERS[name](num_steps, **kw)


def solver_for(cfg, shift: float | None = None) -> Solver:
    """The solver a plan config asks for (``cfg.solver`` with ``cfg.num_steps`` levels).

    Flow solvers take the model's sigma ``shift`` (None: the solver's default); DDIM has no shift, so it is ignored.
    The one rule every engine builder uses (runtime/factory.py).
    """
    kw = {} if cfg.solver == "ddim" or shift is None else {"shift": shift}
    return make_solver(cfg.solver, cfg.num_steps, **kw)


__all__ = [
    "FLOW_SCHEDULES",
    "SOLVERS",
    "DDIMSolver",
    "FlowEulerSolver",
    "FlowUniPCSolver",
    "Solver",
    "flow_schedule",
    "make_solver",
    "solver_for",
]
