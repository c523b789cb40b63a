"""Channels of every namespace: how their names are built and who may subscribe to them."""
