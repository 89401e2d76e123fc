"""SI unit scale factors, the names ARTIQ's ``artiq.language.units`` defines
(``ns``, ``us``, ``ms``, ``s``, ``MHz``, ``kV``, ...), each the float value of
its prefix (``ms == 1e-3``)."""

from __future__ import annotations

__all__: list[str] = []

_PREFIXES = "pnum_kMG"  # "_" stands for no prefix
_SMALLEST_EXPONENT = -12


def _register(unit: str, prefixes: str) -> None:
    for position, prefix in enumerate(_PREFIXES):
        if prefix in prefixes:
            name = unit if prefix == "_" else prefix + unit
            globals()[name] = 10.0 ** (_SMALLEST_EXPONENT + 3 * position)
            __all__.append(name)


_register("s", "pnum_")
_register("Hz", "m_kMG")
_register("dB", "_")
_register("V", "um_k")
_register("A", "um_")
_register("W", "num_")
