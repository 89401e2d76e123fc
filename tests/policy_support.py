"""Shared by the storage-policy and live-file tests: an experiment that
uses every declarative rule, and a comparison of HDF5 layouts."""

from __future__ import annotations

import textwrap

import h5py
import numpy as np

EXPERIMENT = textwrap.dedent('''
    import inspect
    import os
    import signal
    import time

    import numpy as np
    try:
        from artiq.experiment import *
    except ImportError:
        from artiq_journal.runner.experiment import *
    from artiq_journal.storage_policy import StoragePolicy


    def meta(exp, **kwargs):
        params = inspect.signature(exp.set_dataset).parameters
        return kwargs if "unit" in params else {}


    class Stored(EnvExperiment):
        journal_storage = StoragePolicy(
            compress_above=4096, compress=["small.*"], compression="gzip",
            compression_level=6, attributes_of={"fit.*": "counts"})

        def build(self):
            self.setattr_argument("kill", StringValue(""))
            self.setattr_argument("variant", StringValue(""))
            self.setattr_argument("n", StringValue("200"))
            self.setattr_argument("delay", StringValue("0"))
            if self.variant == "lzf":
                # Set in build(): recorded by a second run_info record.
                self.journal_storage = StoragePolicy(compress_above=0,
                                                     compression="lzf")
            elif self.variant == "nofile":
                self.journal_storage = StoragePolicy(results_file=False)
        %(extra)s
        def run(self):
            self.set_dataset("counts", np.arange(5000) %% 7,
                             **meta(self, unit="Hz"))
            self.set_dataset("small.a", [1, 2, 3])
            self.set_dataset("fit.amp", 2.5, **meta(self, unit="V"))
            self.set_dataset("fit.params", np.array([1.0, 2.0]))
            self.set_dataset("fit.big", np.zeros(10000))
            self.set_dataset("label", "hello")
            self.set_dataset("ys", [])
            delay = float(self.delay)
            for i in range(int(self.n)):
                self.append_to_dataset("ys", i * 0.25)
                if delay:
                    time.sleep(delay)
                if self.kill == str(i):
                    os.kill(os.getpid(), signal.SIGKILL)
            if self.kill == "end":
                os.kill(os.getpid(), signal.SIGKILL)
''')

CUSTOM = textwrap.dedent('''
        def store_dataset(self, f, name, value):
            group = f["datasets"]
            if name == "counts":
                return group.create_dataset(name, data=value,
                                            compression="gzip",
                                            compression_opts=9,
                                            shuffle=True)
            if name.startswith("fit.") and name != "fit.big":
                group.attrs[name] = value
                return None
            group[name] = value
            return group[name]

        def write_metadata(self, f):
            f.attrs["custom_marker"] = "written by write_metadata"
''')


def experiment_source(custom: bool = False) -> str:
    extra = textwrap.indent(CUSTOM, "    ") if custom else ""
    return EXPERIMENT % {"extra": extra}


def _plain(value):
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.tolist())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return (value.dtype.str, value.item())
    return value


def layout(path: str, groups=("datasets", "archive")) -> dict:
    """Everything about the ``groups`` of an HDF5 file a reader could see:
    per object its kind, dtype, shape, values, filters, chunking and
    attributes; plus the root's keys (without ``artiq_journal``) and
    attributes."""
    content: dict = {}

    def visit(name, obj):
        attrs = {k: _plain(v) for k, v in sorted(obj.attrs.items())}
        if isinstance(obj, h5py.Dataset):
            content[name] = ("dataset", obj.dtype.str, obj.shape,
                             _plain(obj[()]), obj.compression,
                             obj.compression_opts, obj.chunks,
                             obj.shuffle, attrs)
        else:
            content[name] = ("group", attrs)

    with h5py.File(path, "r") as f:
        for group in groups:
            if group in f:
                content[group] = ("group", {
                    k: _plain(v) for k, v in sorted(f[group].attrs.items())})
                f[group].visititems(
                    lambda n, o, g=group: visit(f"{g}/{n}", o))
        content["/"] = (sorted(k for k in f if k != "artiq_journal"),
                        {k: _plain(v) for k, v in f.attrs.items()})
    return content


def problems(path: str) -> list:
    with h5py.File(path, "r") as f:
        return [p.decode() for p in f["artiq_journal/problems"][()]]
