"""The method wrappers :func:`~.attach.attach` installs on a DatasetManager.

Each wrapper calls ARTIQ's original method FIRST, with the caller's very
arguments, and only then builds and appends one record.  So ARTIQ raises
exactly what it raises (a failing call journals nothing) and anything that
goes wrong afterwards -- the journal cannot understand the call, cannot
encode the value, cannot write -- is handed to ``on_fail``, the single place
that decides what happens (:meth:`.attach.LiveJournal._on_fail`).  The
experiment's call has already happened by then.

``mutate``, ``append_to`` and ``get`` have the same signature in every ARTIQ
generation (checked at attach time, see :mod:`.adapters`) and are plain
closures with that signature: the hot path (``append_to``) is the original
call, a two-element list and ``append``, with every name a closure cell.
``set`` takes ``*args, **kwargs`` and leaves the generation's call form to
the adapter.
"""

from __future__ import annotations

from typing import Any, Callable

from ..journal.constants import REC_APPEND, REC_ARCHIVE, REC_MUTATE, REC_SET
from .adapters import ArtiqAdapter

__all__ = ["make_hooks", "HOOKED_METHODS"]

#: The manager methods shadowed by attach().
HOOKED_METHODS = ("set", "mutate", "append_to", "get")


def make_hooks(mgr: Any, adapter: ArtiqAdapter,
               append: Callable[[int, Any], int],
               on_fail: Callable[[int, Any, BaseException], None]
               ) -> tuple[dict[str, Callable], Callable]:
    """The four wrappers and ``retarget(fn)``, which swaps the ``append``
    they call (failed / detached states) without a flag test per call.

    ``on_fail(rtype, payload, exc)`` gets the record type, the payload (or
    the raw ``(args, kwargs)`` when no payload could be built) and the
    exception; it may raise (the disk fail-stop policy), or return to let
    the experiment go on.
    """
    orig_set, orig_mutate = mgr.set, mgr.mutate
    orig_append_to, orig_get = mgr.append_to, mgr.get
    make_set_payload = adapter.set_payload_maker()
    t_set, t_mutate, t_append, t_archive = (REC_SET, REC_MUTATE, REC_APPEND,
                                            REC_ARCHIVE)

    def set(*args, **kwargs):
        orig_set(*args, **kwargs)
        payload = None
        try:
            payload = make_set_payload(args, kwargs)
            append(t_set, payload)
        except Exception as exc:
            on_fail(t_set, payload if payload is not None
                    else (args, kwargs), exc)

    def mutate(key, index, value):
        orig_mutate(key, index, value)
        if type(index) is slice:
            # The codec has no slice; ARTIQ's mutate turns (start, stop,
            # step) back into the same slice.
            index = (index.start, index.stop, index.step)
        try:
            append(t_mutate, [key, index, value])
        except Exception as exc:
            on_fail(t_mutate, [key, index, value], exc)

    def append_to(key, value):
        orig_append_to(key, value)
        try:
            append(t_append, [key, value])
        except Exception as exc:
            on_fail(t_append, [key, value], exc)

    def get(key, archive=False):
        # Decided before the call: ARTIQ archives only values it reads from
        # the dataset DB, i.e. when the key is not in local.
        if archive and key not in mgr.local:
            value = orig_get(key, archive)
            try:
                append(t_archive, [key, value])
            except Exception as exc:
                on_fail(t_archive, [key, value], exc)
            return value
        return orig_get(key, archive)

    def retarget(new_append: Callable[[int, Any], int]) -> None:
        nonlocal append
        append = new_append

    return ({"set": set, "mutate": mutate, "append_to": append_to,
             "get": get}, retarget)
