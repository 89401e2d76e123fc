"""Storage policy: how a run's datasets are laid out in its HDF5 file.

An experiment opts in with ONE class attribute (or one assignment in
``build()``)::

    from artiq_journal.storage_policy import StoragePolicy

    class Scan(EnvExperiment):
        journal_storage = StoragePolicy(compress_above=1 << 20,
                                        compression="gzip",
                                        attributes_of={"fit.*": "counts"})

The policy is *declarative*: plain data, recorded in the journal (run-info
key ``storage_policy``, :meth:`StoragePolicy.to_data`), so ``artiq-recover``,
``artiq-journal export`` and the live file apply it without running the
experiment's code.  Rules, applied to the ``datasets`` group only (the
``archive`` group always has ARTIQ's layout):

* ``compress_above`` (bytes) / ``compress`` (fnmatch patterns, matched
  case-sensitively against the dataset name): a value that numpy converts to
  a numeric or bool array with at least one dimension and one element is
  written with ``compression`` (``"gzip"``, level ``compression_level``,
  default 4; or ``"lzf"``) and h5py's automatic chunking when its
  ``nbytes`` exceeds ``compress_above`` or its name matches a pattern.
  Same values, dtype and shape as ARTIQ's layout.
* ``attributes_of`` ({pattern: target}): a dataset whose name matches
  ``pattern`` is stored as an attribute of dataset ``target`` (first
  matching pattern wins).  The attribute's name is the dataset's name with
  the pattern's literal prefix (the text before its first ``*``, ``?`` or
  ``[``) removed: ``"fit.*"`` stores ``fit.a`` as attribute ``a``.  Its
  metadata items become attributes ``<attr>.<item>``.  Only when the
  target is itself a stored dataset of the run (not moved to an attribute),
  and the value is attribute-sized plain data (a number, bool, str without
  NUL, or a numeric list/array) of at most :data:`ATTRIBUTE_MAX_BYTES`;
  otherwise the dataset keeps ARTIQ's layout.
* ``results_file=False``: no results file at all (not even an empty one):
  ARTIQ's file is removed after it is written, recovery writes none
  (outcome ``no_results_expected``) and there is no live file.

Custom code: an experiment may also define ``store_dataset(self, f, name,
value)`` (write one dataset of the ``datasets`` group however it likes into
the open h5py file ``f``; if it returns an h5py object, the dataset's
metadata items are set as its attributes) and ``write_metadata(self, f)``
(extra root objects/attributes, called after ARTIQ's root datasets are
written).  Their names are recorded (``custom``); recovery runs them only
with ``artiq-recover --trust-experiment-code`` (see
:mod:`artiq_journal.recovery.experiment_code`).  ``JournalStorage`` (in
:mod:`artiq_journal.storage_layout`) is a mixin whose ``store_dataset``
is the default, for ``super()`` calls.

This module is plain data: it imports neither h5py nor ARTIQ.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StoragePolicy", "POLICY_VERSION", "NO_RESULTS_FILE",
           "CUSTOM_METHODS", "ATTRIBUTE_MAX_BYTES", "PolicyError"]

#: Version of the plain-data form (``to_data``).
POLICY_VERSION = 1
#: Compression filters a policy may name (both ship with every h5py).
COMPRESSIONS = ("gzip", "lzf")
DEFAULT_GZIP_LEVEL = 4
#: Experiment methods that make a custom layout.
CUSTOM_METHODS = ("store_dataset", "write_metadata")
#: Largest value stored as an attribute (HDF5 1.10 keeps an object's
#: attributes in 64 KiB; several must fit).
ATTRIBUTE_MAX_BYTES = 16 << 10
#: Bounds on journal content (a hostile journal must stay cheap).
_MAX_PATTERNS = 256
_MAX_PATTERN_CHARS = 1024


class PolicyError(ValueError):
    """A storage policy (given by an experiment or read from a journal) is
    not valid."""


def _patterns(value: Any, what: str) -> tuple:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or len(value) > _MAX_PATTERNS \
            or not all(isinstance(p, str) and 0 < len(p) <= _MAX_PATTERN_CHARS
                       for p in value):
        raise PolicyError(f"{what} must be a list of at most {_MAX_PATTERNS} "
                          "non-empty pattern strings")
    return tuple(value)


def literal_prefix(pattern: str) -> str:
    """The text of ``pattern`` before its first wildcard character."""
    for i, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:i]
    return pattern


@dataclass(frozen=True)
class StoragePolicy:
    """A declarative storage policy (see the module docstring)."""

    compress_above: "int | None" = None
    compress: tuple = ()
    compression: str = "gzip"
    compression_level: "int | None" = None
    attributes_of: dict = field(default_factory=dict)
    results_file: bool = True
    #: Names of the experiment's custom methods (filled in when the policy
    #: is recorded; not meant to be given by hand).
    custom: tuple = ()

    def __post_init__(self) -> None:
        ca = self.compress_above
        if ca is not None and (not isinstance(ca, int) or
                               isinstance(ca, bool) or ca < 0):
            raise PolicyError("compress_above must be None or an int >= 0")
        object.__setattr__(self, "compress",
                           _patterns(self.compress, "compress"))
        if self.compression not in COMPRESSIONS:
            raise PolicyError(f"compression must be one of {COMPRESSIONS}")
        level = self.compression_level
        if level is not None and (self.compression != "gzip" or
                                  not isinstance(level, int) or
                                  isinstance(level, bool) or
                                  not 0 <= level <= 9):
            raise PolicyError("compression_level is an int 0..9, for gzip")
        attrs = self.attributes_of
        if not isinstance(attrs, dict) or len(attrs) > _MAX_PATTERNS or \
                not all(isinstance(k, str) and isinstance(v, str)
                        and 0 < len(k) <= _MAX_PATTERN_CHARS
                        and 0 < len(v) <= _MAX_PATTERN_CHARS
                        for k, v in attrs.items()):
            raise PolicyError("attributes_of must map pattern strings to "
                              "dataset names")
        object.__setattr__(self, "attributes_of", dict(attrs))
        if not isinstance(self.results_file, bool):
            raise PolicyError("results_file must be True or False")
        custom = self.custom
        if isinstance(custom, list):
            custom = tuple(custom)
        if not isinstance(custom, tuple) or \
                not all(c in CUSTOM_METHODS for c in custom):
            raise PolicyError(f"custom names only {CUSTOM_METHODS}")
        object.__setattr__(self, "custom", tuple(sorted(set(custom))))

    # -- decisions (the same for every writer) ------------------------------

    @property
    def is_default(self) -> bool:
        """True when this policy writes exactly ARTIQ's layout."""
        return (self.compress_above is None and not self.compress
                and not self.attributes_of and self.results_file
                and not self.custom)

    def compresses(self, name: str, nbytes: int) -> bool:
        """Whether an array of ``nbytes`` named ``name`` is compressed."""
        if self.compress_above is not None and nbytes > self.compress_above:
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.compress)

    def filter_options(self) -> dict:
        """``create_dataset`` keywords of a compressed dataset."""
        if self.compression == "lzf":
            return {"compression": "lzf", "chunks": True}
        level = DEFAULT_GZIP_LEVEL if self.compression_level is None \
            else self.compression_level
        return {"compression": "gzip", "compression_opts": level,
                "chunks": True}

    def attribute_target(self, name: str) -> "tuple[str, str] | None":
        """``(target dataset, attribute name)`` for a dataset stored as an
        attribute, by the first matching ``attributes_of`` pattern."""
        for pattern, target in self.attributes_of.items():
            if fnmatch.fnmatchcase(name, pattern):
                prefix = literal_prefix(pattern)
                attr = name[len(prefix):] if prefix and \
                    name.startswith(prefix) else name
                return target, (attr or name)
        return None

    # -- plain data (the journal's form) -------------------------------------

    def to_data(self) -> dict:
        """The run-info ``storage_policy`` map (plain data, codec-safe)."""
        return {"version": POLICY_VERSION,
                "results_file": self.results_file,
                "compress_above": self.compress_above,
                "compress": list(self.compress),
                "compression": self.compression,
                "compression_level": self.compression_level,
                "attributes_of": dict(self.attributes_of),
                "custom": list(self.custom)}

    @classmethod
    def from_data(cls, data: Any) -> "StoragePolicy":
        """The policy of a ``to_data`` map; PolicyError if it is not one
        (an unknown version, a wrong type, a hostile size)."""
        if not isinstance(data, dict):
            raise PolicyError("storage_policy is not a map")
        if data.get("version") != POLICY_VERSION:
            raise PolicyError(f"storage_policy version {data.get('version')!r}"
                              f" is not {POLICY_VERSION}")
        try:
            return cls(compress_above=data.get("compress_above"),
                       compress=data.get("compress", ()),
                       compression=data.get("compression", "gzip"),
                       compression_level=data.get("compression_level"),
                       attributes_of=data.get("attributes_of", {}),
                       results_file=data.get("results_file", True),
                       custom=data.get("custom", ()))
        except PolicyError:
            raise
        except Exception as exc:  # noqa: BLE001 - hostile content
            raise PolicyError(f"bad storage_policy: {exc}") from None

    def with_custom(self, custom: "tuple | list") -> "StoragePolicy":
        return StoragePolicy(self.compress_above, self.compress,
                             self.compression, self.compression_level,
                             self.attributes_of, self.results_file,
                             tuple(custom))


#: "No results file at all": ``journal_storage = NO_RESULTS_FILE``.
NO_RESULTS_FILE = StoragePolicy(results_file=False)
