"""The application layer: use cases grouped by feature, with no HTTP (aiohttp) knowledge."""
