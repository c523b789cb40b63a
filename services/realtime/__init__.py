"""Real-time channels for clients: the protocol-neutral session, wire codecs and the registry.

::

    handlers/realtime/websocket.py   GET /ws: reads frames, feeds them to a Session
    handlers/realtime/sse.py, uni.py one-way HTTP streams: a Session opened from the request
    handlers/realtime/transport.py   Connection (a Client): queues and writes bytes
    handlers/realtime/stream.py      the Connection writing HTTP chunks (held until it starts)
            │
    services/realtime/session.py     Session: commands → results/errors, limits, presence
    services/realtime/codecs/*.py    one Codec per wire protocol: text ↔ commands, results → bytes
    services/realtime/wire.py        Wire = codec + framing (the hub encodes once per Wire)
    services/realtime/registry.py    every local client, by id and user; cluster-wide disconnects

A new protocol is a codec (plus a route that picks it); a new transport is a Client
implementation and a framing. Neither touches the session.
"""
