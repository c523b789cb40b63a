"""centrifuge-python, the Centrifugo Python SDK (pinned in the ``test`` extra)."""
