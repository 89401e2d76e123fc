"""The package must run on Python 3.9: ARTIQ release-7's environment.

``vermin`` (a library made for this) parses every module and reports the
lowest Python version each construct needs; the check fails on anything
newer than 3.9 at run time.  Annotations are not evaluated (every module
uses ``from __future__ import annotations``), so ``X | None`` in a hint is
fine and vermin is told so."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src", "artiq_journal")


def test_vermin_says_the_package_runs_on_python_3_9():
    pytest.importorskip("vermin")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from vermin import main; "
         "sys.argv[0] = 'vermin'; sys.exit(main())",
         "-q", "--no-tips", "--violations", "-t=3.9-", SRC],
        capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "", proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_module_postpones_its_annotations():
    # Without it, a ``str | None`` hint is evaluated at import and fails on
    # 3.9 -- the one 3.10 construct vermin does not flag by default.
    missing = []
    for directory, _dirs, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            annotations = [getattr(node, "annotation", None)
                           for node in ast.walk(tree)
                           if isinstance(node, (ast.AnnAssign, ast.arg))]
            annotations += [node.returns for node in ast.walk(tree)
                            if isinstance(node, (ast.FunctionDef,
                                                 ast.AsyncFunctionDef))]
            has_annotations = any(
                isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr)
                for a in annotations if a is not None for sub in ast.walk(a))
            future = any(isinstance(node, ast.ImportFrom)
                         and node.module == "__future__"
                         and any(a.name == "annotations" for a in node.names)
                         for node in tree.body)
            if has_annotations and not future:
                missing.append(os.path.relpath(path, SRC))
    assert missing == []
