"""App factory, settings, CLI, lifecycle and metrics registry. Nothing imports this package."""
