"""The ``eventbus`` command line (``gateway/cli/main.py``)."""
