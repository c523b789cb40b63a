"""Buyers' requests and vendors' proposals: their models, state machine and live events."""
