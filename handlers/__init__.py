"""HTTP and WebSocket handlers, middlewares, and the small non-HTTP services they use
(tokens, permissions, the analysis runner, the outbox relay). Never imports ``server``."""
