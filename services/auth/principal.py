"""Who is making a request: the verified contents of an access or service token."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("buyer", "vendor", "admin")
SERVICE_ROLE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``role`` is ``buyer``, ``vendor``, ``admin`` or ``service`` (a trusted backend);
    ``expires_at`` is the token's expiry as a Unix time.
    """

    user_id: str
    role: str
    email: str | None
    token_id: str
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    @property
    def is_privileged(self) -> bool:
        """Admins and trusted services may read any channel."""
        return self.role in ("admin", SERVICE_ROLE)
