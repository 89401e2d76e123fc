"""``artiq-journal demo``: crash, recover, resume and compare, step by step.

``scan.py`` is the example experiment (an ordinary ARTIQ experiment file
that also runs under the built-in runner); ``walkthrough.py`` drives it.
"""
