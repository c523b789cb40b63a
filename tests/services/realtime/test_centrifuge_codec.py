"""The Centrifugo codec's pushes and codes, as the SDKs read them (``centrifuge-js``:
``_handlePush``, ``_handleUnsubscribe``, ``_handleDisconnect``; codes of ``disconnect.go``)."""

from __future__ import annotations

import orjson
import pytest

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.codecs import arena
from services.realtime.codecs.centrifuge import CODEC
from services.realtime.errors import (
    UNSUBSCRIBE_REVOKED,
    UNSUBSCRIBE_SERVER,
    CommandError,
    Disconnect,
    PermissionDenied,
    TokenExpired,
)


def test_every_disconnect_has_a_code_in_the_right_reconnect_range() -> None:
    reconnect = {
        Disconnect.SHUTDOWN,
        Disconnect.WRITE_FAILED,
        Disconnect.SLOW_CONSUMER,
        Disconnect.RATE_LIMITED,
        Disconnect.TOKEN_EXPIRED,
    }
    for disconnect in Disconnect:
        code = CODEC.close_code(disconnect)
        if disconnect is Disconnect.NORMAL:
            assert code == 3000
        elif disconnect in reconnect:
            assert 3000 <= code < 3500, disconnect
        else:
            assert 3500 <= code < 4000, disconnect  # the SDK stays disconnected
        assert arena.CODEC.close_code(disconnect) >= 1000


def test_publication_push_carries_the_raw_data_and_offset() -> None:
    pub = Publication(channel="alerts:a", offset=7, epoch="ep", data=b'{"x":[1,2]}', time=0.0)
    assert orjson.loads(CODEC.publication(pub)) == {
        "push": {"channel": "alerts:a", "pub": {"data": {"x": [1, 2]}, "offset": 7}}
    }


def test_join_leave_unsubscribe_and_resync_pushes() -> None:
    entry = PresenceEntry("c1", "u1", {"role": "buyer"})
    info = {"client": "c1", "user": "u1", "conn_info": {"role": "buyer"}}
    assert orjson.loads(CODEC.presence("join", "proposals:r", entry)) == {
        "push": {"channel": "proposals:r", "join": {"info": info}}
    }
    assert orjson.loads(CODEC.presence("leave", "proposals:r", entry))["push"]["leave"] == {
        "info": info
    }
    # every server unsubscribe is final: Centrifugo's 2000 (the SDKs resubscribe from 2500 on)
    for code in (UNSUBSCRIBE_REVOKED, UNSUBSCRIBE_SERVER):
        gone = orjson.loads(CODEC.unsubscribed("proposals:r", code, "permission revoked"))
        assert gone["push"]["unsubscribe"] == {"code": 2000, "reason": "permission revoked"}
    lost = orjson.loads(CODEC.resync("alerts:a", StreamPosition(3, "e")))
    assert lost["push"]["disconnect"]["code"] == 3010  # insufficient state: reconnect, recover
    ours = orjson.loads(
        arena.CODEC.unsubscribed("proposals:r", UNSUBSCRIBE_REVOKED, "permission revoked")
    )
    assert ours == {
        "type": "unsubscribe",
        "channel": "proposals:r",
        "code": UNSUBSCRIBE_REVOKED,
        "reason": "permission revoked",
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [(PermissionDenied("no"), 103), (TokenExpired("token expired"), 109)],
)
def test_error_codes(error: CommandError, code: int) -> None:
    request = c.Request(5, c.Subscribe("alerts:a"))
    reply = orjson.loads(CODEC.error(request, error))
    assert reply == {"id": 5, "error": {"code": code, "message": str(error)}}


def test_decoding_batches_pongs_send_and_unknown_methods() -> None:
    decoded = CODEC.decode(
        '{"id":1,"connect":{"token":"t"}}\n{}\n{"send":{"data":1}}\n{"id":2,"nope":{}}\n'
    )
    assert decoded[0] == c.Request(1, c.Authenticate("t"))
    assert len(decoded) == 2
    assert isinstance(decoded[1], c.Malformed)
    assert decoded[1].error.code == "method_not_found"
    (rpc,) = CODEC.decode('{"id":3,"rpc":{"method":"x"}}')
    assert isinstance(rpc, c.Malformed)
    assert rpc.id == 3
    (sub,) = CODEC.decode(
        '{"id":4,"subscribe":{"channel":"a:b","recover":true,"offset":5,"epoch":"e"}}'
    )
    assert sub == c.Request(4, c.Subscribe("a:b", StreamPosition(5, "e")))


def test_decoding_history_filters() -> None:
    (plain,) = CODEC.decode('{"id":1,"history":{"channel":"a:b"}}')
    assert plain == c.Request(1, c.History("a:b", None, 0, stream_order=True))
    (full,) = CODEC.decode(
        '{"id":2,"history":{"channel":"a:b","limit":-1,"reverse":true,'
        '"since":{"offset":3,"epoch":"e"}}}'
    )
    assert full == c.Request(
        2, c.History("a:b", StreamPosition(3, "e"), 1000, reverse=True, stream_order=True)
    )
    (bad,) = CODEC.decode('{"id":3,"history":{"channel":"a:b","reverse":"yes"}}')
    assert isinstance(bad, c.Malformed)
    assert CODEC.error(bad, bad.error) == (
        b'{"id":3,"error":{"code":107,"message":"\'reverse\' must be a boolean"}}'
    )
