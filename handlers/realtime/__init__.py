"""The aiohttp side of real-time channels: the WebSocket upgrade and read loop
(:mod:`~handlers.realtime.websocket`) and the connection transport
(:mod:`~handlers.realtime.transport`)."""
