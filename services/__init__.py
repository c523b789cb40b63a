"""The application layer: what the service does, grouped by feature, with no HTTP in it.

``handlers`` parse a request or frame, call in here and shape the answer; this package decides
(who may do what, which state change is allowed, what gets published) and talks to the channel
engine (``pubsub``) and the database (``storage``). Nothing here imports aiohttp or ``handlers``;
errors are the domain errors of :mod:`services.errors`, which handlers map to HTTP statuses or
WebSocket replies.

``alerts``       webhook bodies and signatures: a webhook becomes an alert on a channel
``analysis``     streaming AI analyses (providers, prompt, runner)
``auth``         tokens, principals, rate limits, signed service requests
``channels``     channel names of every namespace and who may subscribe to them
``mail``         sending e-mail (magic links)
``marketplace``  buyers' requests, vendors' proposals and invitations, their live events
``outbox``       the relay that publishes committed events
``realtime``     client sessions, wire protocols and the connection registry
``users``        users' own profiles (name, company, notification settings)
"""
