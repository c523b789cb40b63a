"""Sending e-mail: an SMTP backend and a console backend for development."""
