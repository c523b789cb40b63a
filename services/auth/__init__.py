"""Who is calling and what they may do: access/refresh/service tokens (``tokens``), the verified
caller (``principal``), shared rate limits (``ratelimit``). The login flow's HTTP surface is
``handlers/auth_api.py``."""
