"""The demo's example experiment: a resumable scan of a simulated resonance.

An ordinary ARTIQ experiment file: it runs unchanged under ARTIQ (the
dashboard, ``artiq_run``) and under the built-in runner (``artiq-journal
run``).  Only two things make it resumable, both from
:class:`~artiq_journal.worker_hooks.JournalResumable`:

* ``self.checkpoint(i=...)`` after every ``checkpoint_every`` points, where
  the datasets hold exactly the points before ``i``;
* ``self.resume_state(None)`` at the start of ``run()``: None on a fresh
  run; on a resumed run (argument ``resume_from`` = the earlier RID, or
  ``artiq-journal resume RID``) the datasets are back as they were at the
  earlier run's last checkpoint and the state says where to continue.

The "measurement" is deterministic (a Lorentzian line with Poisson noise
seeded per point), so a run that was killed and resumed must end with
exactly the data of an uninterrupted run -- which ``artiq-journal demo``
checks.

Datasets (all under ``scan.``):

==================  ==========================================================
``detunings``       archive only (``archive=True``, not broadcast), unit MHz,
                    set in ``prepare``: the planned scan points
``settings``        archive only, set in ``build``: the scan's parameters
``x``, ``counts``   broadcast + archived lists, one entry appended per point
``index``           broadcast + archived list of the point numbers measured:
                    a duplicated or missing point shows here
``counts_grid``     broadcast + archived array, pre-filled with NaN, one
                    element mutated per point
``progress``        broadcast only (``archive=False``): never in the file
==================  ==========================================================
"""

import time

import numpy as np

try:
    from artiq.experiment import *  # noqa: F401,F403
except ImportError:
    from artiq_journal.runner.experiment import *  # noqa: F401,F403

from artiq_journal.worker_hooks import JournalResumable

#: The simulated resonance (MHz) and its photon counts.
CENTER, HALF_WIDTH, PEAK, BACKGROUND = 0.4, 1.5, 120.0, 6.0
#: Defaults of the ``span`` (MHz) and ``seed`` arguments.
DEFAULT_SPAN, DEFAULT_SEED = 10.0, 2024


def planned_detunings(points: int, span: float) -> np.ndarray:
    """The scan points (MHz): ``points`` evenly spaced over ``span``."""
    return np.linspace(-span / 2, span / 2, points)


def simulated_counts(index: int, detuning: float, seed: int) -> int:
    """Photon counts of point ``index``: Poisson noise around a Lorentzian,
    seeded by ``(seed, index)`` so every run measures the same value."""
    rng = np.random.default_rng([seed, index])
    mean = BACKGROUND + PEAK / (1.0 + ((detuning - CENTER) / HALF_WIDTH) ** 2)
    return int(rng.poisson(mean))


class ResonanceScan(JournalResumable, EnvExperiment):
    """Resonance scan (artiq-journal demo): resumable after a crash."""

    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("points", NumberValue(40, precision=0, step=1,
                                                    min=2, max=100000))
        self.setattr_argument("span", NumberValue(DEFAULT_SPAN, unit="MHz",
                                                  scale=1.0))
        self.setattr_argument("delay", NumberValue(0.1, unit="s",
                                                   scale=1.0, min=0.0))
        self.setattr_argument("checkpoint_every",
                              NumberValue(3, precision=0, step=1, min=1))
        self.setattr_argument("seed", NumberValue(DEFAULT_SEED, precision=0,
                                                step=1))
        self.set_dataset("scan.settings",
                         np.array([self.points, self.span, self.delay]),
                         archive=True)

    def prepare(self):
        self.detunings = planned_detunings(self.points, self.span)
        self.set_dataset("scan.detunings", self.detunings, unit="MHz",
                         precision=3)

    def run(self):
        state = self.resume_state(None)
        if state is None:
            # Fresh run: the scan starts empty.
            self.set_dataset("scan.x", [], unit="MHz", broadcast=True)
            self.set_dataset("scan.counts", [], broadcast=True)
            self.set_dataset("scan.index", [], broadcast=True)
            self.set_dataset("scan.counts_grid",
                             np.full(self.points, np.nan), broadcast=True)
            state = {"i": 0}
        self.set_dataset("scan.progress", state["i"] / self.points,
                         broadcast=True, archive=False)
        for i in range(state["i"], self.points):
            if self.scheduler.check_pause():
                # A higher-priority run waits, or termination was asked
                # for (also artiq_run's scheduler has check_pause).
                try:
                    self.scheduler.pause()
                except TerminationRequested:
                    break  # end normally: the results file is written
            detuning = float(self.detunings[i])
            counts = simulated_counts(i, detuning, self.seed)
            time.sleep(self.delay)  # the "measurement" takes a while
            self.append_to_dataset("scan.x", detuning)
            self.append_to_dataset("scan.counts", counts)
            self.append_to_dataset("scan.index", i)
            self.mutate_dataset("scan.counts_grid", i, counts)
            self.set_dataset("scan.progress", (i + 1) / self.points,
                             broadcast=True, archive=False)
            if (i + 1) % self.checkpoint_every == 0 or i + 1 == self.points:
                # Points 0..i are in the datasets: continue at i + 1.
                self.checkpoint(i=i + 1)

    def analyze(self):
        counts = np.asarray(self.get_dataset("scan.counts"), dtype=float)
        if len(counts):
            peak = int(np.argmax(counts))
            self.set_dataset("scan.peak_detuning",
                             float(self.get_dataset("scan.x")[peak]),
                             unit="MHz")
