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

import numpy as np

from ..journal import codec
from ..journal.constants import REC_APPEND, REC_ARCHIVE, REC_MUTATE, REC_SET
from .adapters import ArtiqAdapter

__all__ = ["make_hooks", "HOOKED_METHODS"]

#: The manager methods shadowed by attach().
HOOKED_METHODS = ("set", "mutate", "append_to", "get")


def _not_encoded(*args: Any) -> None:
    return None


def _index(index: Any) -> Any:
    """A mutate index as journaled: a slice as ``(start, stop, step)``."""
    if type(index) is slice:
        return (index.start, index.stop, index.step)
    return index


def make_hooks(mgr: Any, adapter: ArtiqAdapter,
               append: Callable[[int, Any], int],
               on_fail: Callable[[int, Any, BaseException], None],
               append_encoded: Callable[[int, bytes], int] | None = None
               ) -> tuple[dict[str, Callable], Callable]:
    """The four wrappers and ``retarget(fn)``, which swaps the ``append``
    (and ``append_encoded``) they call (failed / detached states) without
    a flag test per call.

    ``append_encoded(rtype, payload)`` takes a payload already encoded by
    :func:`codec.encode_append` / :func:`codec.encode_mutate` (the same
    bytes ``append`` would write; ``JournalWriter.append_encoded``);
    without it every record goes through ``append``.

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
    if append_encoded is None:
        encode_append = encode_mutate = append_head = _not_encoded
    else:
        encode_append, encode_mutate = codec.encode_append, codec.encode_mutate
        append_head = codec.append_head
    scalar_encoding, array_prefix = codec.value_encoding, codec.array_prefix
    ndarray = np.ndarray

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
        try:
            # A slice is encoded as the tuple (start, stop, step) (the
            # codec has no slice; ARTIQ's mutate turns the tuple back into
            # the same slice).
            payload = encode_mutate(key, index, value)
            if payload is not None:
                append_encoded(t_mutate, payload)
                return
        except Exception as exc:
            on_fail(t_mutate, [key, _index(index), value], exc)
            return
        index = _index(index)
        try:
            append(t_mutate, [key, index, value])
        except Exception as exc:
            on_fail(t_mutate, [key, index, value], exc)

    def append_to(key, value):
        orig_append_to(key, value)
        try:
            # encode_append's common cases, inlined (a call less on the
            # hottest path): a float, numpy scalar or small array (of a
            # dtype and shape seen before) under a known key.
            if type(key) is str:
                head = append_head(key)
                if head is not None:
                    kind = type(value)
                    enc = scalar_encoding(kind)
                    if enc is not None:
                        append_encoded(t_append, head + enc(value))
                        return
                    if kind is ndarray:
                        prefix = array_prefix((value.dtype, value.shape))
                        if prefix is not None:
                            append_encoded(t_append, head + prefix
                                           + value.tobytes())
                            return
            payload = encode_append(key, value)
            if payload is None:
                append(t_append, [key, value])
            else:
                append_encoded(t_append, payload)
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
        nonlocal append, append_encoded
        append = append_encoded = new_append

    return ({"set": set, "mutate": mutate, "append_to": append_to,
             "get": get}, retarget)
