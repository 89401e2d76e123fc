"""Operating journals from the outside: list them, tell live from dead and
working from hung, prune finished ones, check the installation.  Read-only
towards live writers (see ``journal/liveness.py``)."""
