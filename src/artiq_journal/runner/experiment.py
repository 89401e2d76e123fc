"""Drop-in for the host-side basics of ``from artiq.experiment import *``.

An experiment written as ::

    import numpy as np
    from artiq_journal.runner.experiment import *

    class Scan(EnvExperiment):
        def build(self):
            self.setattr_argument("n", NumberValue(10, precision=0, step=1))
            self.setattr_device("scheduler")

        def run(self):
            self.set_dataset("counts", np.zeros(self.n), broadcast=True)
            ...

runs under the built-in runner. Every name exported here is also exported by
ARTIQ's ``artiq.experiment`` with the same meaning, so switching the import
line back runs the experiment under ARTIQ.
"""

from artiq_journal.runner import units
from artiq_journal.runner.environment import (  # noqa: F401
    BooleanValue, CancelledArgsError, DefaultMissing, EnumerationValue,
    EnvExperiment, Experiment, HasEnvironment, NoDefault, NumberValue,
    PYONValue, StringValue)
from artiq_journal.runner.scheduler import TerminationRequested  # noqa: F401
from artiq_journal.runner.units import *  # noqa: F401,F403

__all__ = ["NoDefault", "DefaultMissing", "PYONValue", "BooleanValue",
           "EnumerationValue", "NumberValue", "StringValue",
           "HasEnvironment", "Experiment", "EnvExperiment",
           "CancelledArgsError", "TerminationRequested"] + list(units.__all__)
