"""ARTIQ's experiment arguments: the processors (``NumberValue``,
``StringValue``, ...), ``NoDefault`` and ``ProcessArgumentManager``, with
the names, signatures, processing and error messages of
``artiq.language.environment``.

A processor's ``process`` turns a supplied value into the argument's value;
``default()`` gives the default or raises ``DefaultMissing``.
"""

from __future__ import annotations

from typing import Any

from artiq_journal import pyon
from artiq_journal.runner import units

__all__ = ["NoDefault", "DefaultMissing", "CancelledArgsError",
           "PYONValue", "BooleanValue", "EnumerationValue", "NumberValue",
           "StringValue", "ProcessArgumentManager"]


class NoDefault:
    """Represents the absence of a default value."""


class DefaultMissing(Exception):
    """Raised by a processor's ``default()`` when it has no default."""


class CancelledArgsError(Exception):
    """Raised by ``HasEnvironment.interactive`` when the request is
    cancelled."""


class _SimpleArgProcessor:
    def __init__(self, default: Any = NoDefault) -> None:
        if isinstance(default, list):
            raise NotImplementedError
        if default is not NoDefault:
            self.default_value = self.process(default)

    def default(self) -> Any:
        if not hasattr(self, "default_value"):
            raise DefaultMissing
        return self.default_value

    def process(self, x: Any) -> Any:
        return x

    def describe(self) -> dict:
        d = {"ty": type(self).__name__}
        if hasattr(self, "default_value"):
            d["default"] = self.default_value
        return d


class PYONValue(_SimpleArgProcessor):
    """Any PYON-serializable value; supplied arguments are PYON (v2) text."""

    def __init__(self, default: Any = NoDefault) -> None:
        # A list is a valid PYON default, unlike for the other processors.
        if default is not NoDefault:
            self.default_value = default

    def process(self, x: str) -> Any:
        return pyon.decode(x)

    def describe(self) -> dict:
        d = {"ty": type(self).__name__}
        if hasattr(self, "default_value"):
            d["default"] = pyon.encode(self.default_value)
        return d


class BooleanValue(_SimpleArgProcessor):
    """A boolean argument."""

    def process(self, x: Any) -> bool:
        if type(x) != bool:  # noqa: E721 -- ARTIQ rejects bool subclasses too
            raise ValueError("Invalid BooleanValue value")
        return x


class EnumerationValue(_SimpleArgProcessor):
    """A string among ``choices``."""

    def __init__(self, choices: list, default: Any = NoDefault,
                 quickstyle: bool = False) -> None:
        self.choices = choices
        self.quickstyle = quickstyle
        super().__init__(default)

    def process(self, x: Any) -> Any:
        if x not in self.choices:
            raise ValueError("Invalid EnumerationValue value")
        return x

    def describe(self) -> dict:
        d = super().describe()
        d["choices"] = self.choices
        d["quickstyle"] = self.quickstyle
        return d


class NumberValue(_SimpleArgProcessor):
    """A number; ``float`` unless ``type="int"``, or ``type="auto"`` with
    precision 0, scale 1 and an integer step. ``scale`` defaults to the value
    of a known ``unit`` (``"ms"`` -> 0.001)."""

    valid_types = ["auto", "float", "int"]

    def __init__(self, default: Any = NoDefault, unit: str = "", *,
                 scale: float | None = None, step: float | None = None,
                 min: float | None = None, max: float | None = None,
                 precision: int = 2, type: str = "auto",
                 ndecimals: int | None = None) -> None:
        if ndecimals is not None:
            print("DeprecationWarning: 'ndecimals' is deprecated. "
                  "Please use 'precision' instead.")
            precision = ndecimals
        if scale is None:
            if unit == "":
                scale = 1.0
            else:
                try:
                    scale = getattr(units, unit)
                except AttributeError:
                    raise KeyError("Unit {} is unknown, you must specify "
                                   "the scale manually".format(unit))
        if step is None:
            step = scale / 10.0
        self.unit, self.scale, self.step = unit, scale, step
        self.min, self.max = min, max
        self.precision, self.type = precision, type
        if self.type not in NumberValue.valid_types:
            raise TypeError("type must be 'float', 'int' or 'auto'")
        if self.type == "int" and not self._is_int_compatible():
            raise ValueError("Value marked as integer but settings are "
                             "not compatible. Please set precision = 0, "
                             "scale = 1 and step to an integer")
        super().__init__(default)

    def _is_int_compatible(self) -> bool:
        return (self.precision == 0 and int(self.step) == self.step
                and self.scale == 1)

    def _is_int(self) -> bool:
        return self.type == "int" or (self.type == "auto"
                                      and self._is_int_compatible())

    def process(self, x: Any) -> int | float:
        return int(x) if self._is_int() else float(x)

    def describe(self) -> dict:
        d = super().describe()
        d.update(unit=self.unit, scale=self.scale, step=self.step,
                 min=self.min, max=self.max, precision=self.precision,
                 type=self.type)
        return d


class StringValue(_SimpleArgProcessor):
    """A string argument."""


class ProcessArgumentManager:
    """Processes the arguments of a run (``expid["arguments"]``)."""

    def __init__(self, unprocessed_arguments: dict) -> None:
        self.unprocessed_arguments = unprocessed_arguments
        self._processed_arguments: set = set()

    def get(self, key: str, processor: Any, group: str | None,
            tooltip: str | None) -> Any:
        if key in self.unprocessed_arguments:
            value = processor.process(self.unprocessed_arguments[key])
            self._processed_arguments.add(key)
            return value
        return processor.default()

    def check_unprocessed_arguments(self) -> None:
        """``AttributeError`` naming supplied arguments nobody asked for."""
        unprocessed = (set(self.unprocessed_arguments)
                       - self._processed_arguments)
        if unprocessed:
            raise AttributeError("Supplied argument(s) not queried in "
                                 "experiment: " + ", ".join(unprocessed))

    def get_interactive(self, interactive_arglist: list, title: str) -> Any:
        raise NotImplementedError
