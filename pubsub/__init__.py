"""The channel engine: brokers (memory, Redis), history with offsets, and the per-process hub.

Knows nothing of HTTP. Dependency direction: ``handlers`` and ``server`` import this package,
never the reverse.
"""
