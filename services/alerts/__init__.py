"""Alert feeds (strategies): parsing webhook bodies (TradingView, Arrow, JSON, text), verifying
webhook signatures (secret URLs, Standard Webhooks), turning a webhook into a stored alert that
the outbox publishes on the strategy's channel (``ingest``), the one alert representation
(``feed``), strategies and their secrets (``strategies``) and reading and correcting alerts
(``alerts``)."""
