"""Recovery: rebuild ARTIQ results files from orphaned journals.

``recover(paths, *, output=None, dry_run=False, force=False, progress=None)``
finds journals under ``paths``, replays the orphaned ones and publishes
``<rid:09d>-<Class>.h5`` atomically beside them (or under ``output``);
it returns a :class:`Report`.  ``artiq-recover`` is its command line.

Modules, by job: ``discover`` (find and probe journals), ``hdf5_out``
(ARTIQ file layout), ``publish`` (atomic publish, move aside, done marker),
``report`` (outcomes and problems), ``recover`` (the orchestration).
"""

from .recover import ProgressCallback, recover
from .report import FINE_OUTCOMES, OUTCOMES, Problem, Report, RunReport

__all__ = ["recover", "Report", "RunReport", "Problem", "OUTCOMES",
           "FINE_OUTCOMES", "ProgressCallback"]
