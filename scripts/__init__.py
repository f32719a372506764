"""Developer scripts run by the Makefile (``scripts/services.py``)."""
