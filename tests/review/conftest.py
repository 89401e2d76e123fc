import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (TESTS,):
    if p not in sys.path:
        sys.path.insert(0, p)
