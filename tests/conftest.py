"""Shared pytest configuration for the artiq-journal test suite."""

import os
import sys

# Make test helper modules (``import artiq_vendor``) importable whatever the
# rootdir or import mode.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
