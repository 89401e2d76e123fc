"""artiq-journal: crash-safe checkpointing, recovery and resume for ARTIQ."""

__version__ = "0.1.0"
