"""PostgreSQL storage: the asyncpg pool, SQL migrations and one repository module per aggregate.

Knows nothing of HTTP; raises the errors in :mod:`storage.errors`, which handlers translate.
"""
