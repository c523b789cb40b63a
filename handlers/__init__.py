"""aiohttp code only: routes, request parsing, response shaping, middlewares, the WebSocket
endpoint. Handlers call :mod:`services` (and read through ``storage`` repositories where a view
is a plain query), map domain errors to the JSON error envelope, and never import ``server``."""
