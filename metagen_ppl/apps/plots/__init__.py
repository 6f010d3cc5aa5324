"""Plots of scenes, objective traces, assignments and MCMC diagnostics, each written to a PNG file.

Every function writes one PNG (or, for :func:`plot_mcmc_diagnostics`, three)
and returns its path. They accept empty or partial lists of results (a method
that failed is simply absent) and draw what they can; a function with nothing
to draw writes nothing and returns ``None``.

The scene, objective, assignment and forest plots use matplotlib's
object-oriented API (no pyplot state, no display needed). The MCMC trace and
rank plots go through arviz, which uses pyplot; outside an interactive session
the non-interactive Agg backend is selected, and every figure arviz opens is
closed again before returning. Every text is at least 8 pt at the saved size,
and titles, axis labels and legends do not overlap.

Methods are told apart by colour and marker: the built-in method names have
fixed styles, and any other name gets a distinct style from a cycle.
"""

from metagen_ppl.apps.plots.assignments import plot_assignments
from metagen_ppl.apps.plots.mcmc import plot_mcmc_diagnostics, plot_mcmc_trace
from metagen_ppl.apps.plots.objectives import plot_objectives, plot_traces
from metagen_ppl.apps.plots.scenes import plot_scene, plot_scene_arrays, plot_scene_topview, plot_video

__all__ = ["plot_scene", "plot_scene_arrays", "plot_scene_topview", "plot_video", "plot_traces", "plot_objectives",
           "plot_mcmc_trace", "plot_mcmc_diagnostics", "plot_assignments"]
