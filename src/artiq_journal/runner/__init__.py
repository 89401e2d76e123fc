"""A small ARTIQ-compatible experiment runner, for machines without ARTIQ.

Mirrors ARTIQ's names, signatures and semantics: ``environment`` (what
``from artiq.experiment import *`` gives an experiment on the host, also
re-exported by ``experiment``), ``datasets`` (the worker's DatasetManager),
``scheduler`` (the scheduler virtual device and DeviceManager), ``worker``
(the per-run subprocess), ``launch`` (starting it), ``pyon`` (sipyco's
format).
"""

from artiq_journal.runner.launch import (RunningExperiment, RunResult,
                                         run_experiment, start_experiment)

__all__ = ["RunResult", "RunningExperiment", "run_experiment",
           "start_experiment"]
