"""Which address a request is attributed to, with and without trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from handlers.client_ip import client_ip


def _request(peer: str, *forwarded: str) -> Any:
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    request = make_mocked_request("POST", "/api/v1/auth/login", headers=headers)
    request._transport_peername = (peer, 12345)
    return request


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "expected"),
    [
        ("203.0.113.9", ("1.1.1.1",), (), "203.0.113.9"),  # no proxies: header ignored
        ("203.0.113.9", ("1.1.1.1",), ("10.0.0.0/8",), "203.0.113.9"),  # peer not a proxy
        ("10.0.0.2", ("1.1.1.1, 198.51.100.7",), ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", ("198.51.100.7, 10.0.0.3",), ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", ("1.1.1.1", "198.51.100.7"), ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", ("10.0.0.5",), ("10.0.0.0/8",), "10.0.0.5"),  # all trusted: leftmost
        ("10.0.0.2", (), ("10.0.0.0/8",), "10.0.0.2"),
        ("10.0.0.2", ("not-an-ip",), ("10.0.0.0/8",), "10.0.0.2"),
        ("::1", ("2001:db8::1",), ("::1",), "2001:db8::1"),
    ],
)
def test_client_ip(
    peer: str, forwarded: tuple[str, ...], proxies: tuple[str, ...], expected: str
) -> None:
    assert client_ip(_request(peer, *forwarded), proxies) == expected
