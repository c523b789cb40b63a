"""Alert feeds: parsing webhook bodies (TradingView, Arrow, JSON, text), verifying webhook
signatures (secret URLs, Standard Webhooks) and turning a webhook into a stored alert that the
outbox publishes on the strategy's channel."""
