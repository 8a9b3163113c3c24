"""Parsers of model output, one module per wire format; all stream and share the events in `events.py`."""
