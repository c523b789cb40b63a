"""Users' own profiles: name, company and notification settings."""
