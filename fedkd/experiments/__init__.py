"""Experiments: presets and profiles, running them through the Flower simulation engine, reports.

* :mod:`fedkd.experiments.presets` -- experiment presets, resource profiles, ``KEY=VALUE``
  overrides (no Flower, no torch);
* :mod:`fedkd.experiments.runner` -- one validated configuration through our own simulation
  SuperLink (:class:`fedkd.runtime.launch.SimulationSuperLink`), progress, Ctrl-C, sweeps;
* :mod:`fedkd.experiments.report` -- run directories read back into a table and plots.

Both launchers are thin front ends on these: ``fedkd`` (:mod:`fedkd.cli`) and ``make run``
(:mod:`simulations.run`).
"""
