"""Locust load test for Arena Realtime: WebSocket subscribers, publishers, webhooks, REST API.

Run (see ``loadtests/README.md`` for every variable)::

    ARENA_TOKEN=$(arena-realtime token --email lt@example.com --role admin) \\
    ARENA_SERVICE_TOKEN=$(arena-realtime service-token --name locust) \\
    locust -f loadtests/locustfile.py --headless -u 40 -r 20 -t 60s --host http://127.0.0.1:8080

This file talks HTTP and WebSocket only and never imports the project's packages: Locust runs
on gevent, the service on asyncio.

* :class:`WebSocketSubscriber` authenticates over ``/ws``, subscribes to a few channels, checks
  that offsets arrive without gaps and reports publish->receive latency (from the timestamp the
  publisher put into each publication) as ``WS  publish->receive`` in Locust's statistics.
  A gap or a publication still missing when the user stops is a failure (``WS  lost``).
* :class:`ChannelPublisher` posts timestamped publications to the publish API.
* :class:`WebhookSender` creates a strategy, then posts TradingView-style alerts to its secret
  URL and Standard-Webhooks-signed alerts to its signed URL.
* :class:`ApiUser` creates requests, edits them, proposes, shortlists and accepts (each write
  publishes an event).

When Locust quits, a summary (received, lost, gaps) is logged and, with ``LT_SUMMARY_FILE``,
written as JSON; any lost publication makes the process exit with status 1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import time
import uuid
from typing import Any

import gevent
import websocket
from gevent.event import AsyncResult
from locust import FastHttpUser, User, between, constant_throughput, events, task

log = logging.getLogger("arena.loadtest")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


TOKENS = [
    t for t in os.environ.get("ARENA_TOKENS", os.environ.get("ARENA_TOKEN", "")).split(",") if t
]
SERVICE_TOKEN = os.environ.get("ARENA_SERVICE_TOKEN", "")
CHANNELS = [f"alerts:lt-{i}" for i in range(_env_int("LT_CHANNELS", 4))]
CHANNELS_PER_SUBSCRIBER = _env_int("LT_CHANNELS_PER_SUBSCRIBER", 2)
PAYLOAD_BYTES = _env_int("LT_PAYLOAD_BYTES", 200)
STOP_GRACE = _env_float("LT_STOP_GRACE", 3.0)
SUMMARY_FILE = os.environ.get("LT_SUMMARY_FILE", "")

_token_cycle = itertools.cycle(TOKENS or [""])

#: channel -> newest offset the publishers got back (only grows)
PUBLISHED: dict[str, int] = {}
#: strategy feeds created by webhook senders (subscribers may follow them)
FEEDS: list[str] = []
TOTALS = {"received": 0, "lost": 0, "gaps": 0, "duplicates": 0, "subscribers": 0}


def _token() -> str:
    token = next(_token_cycle)
    if not token:
        raise RuntimeError("set ARENA_TOKEN (or ARENA_TOKENS) to an access token")
    return token


def _auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {_token()}"}


def _fire(
    env: Any, name: str, started: float, length: int = 0, exc: Exception | None = None
) -> None:
    env.events.request.fire(
        request_type="WS",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=length,
        exception=exc,
        context={},
    )


class LostPublications(Exception):
    """Publications that a subscriber never received."""


class WebSocketSubscriber(User):
    """One WebSocket client following ``LT_CHANNELS_PER_SUBSCRIBER`` channels."""

    weight = _env_int("LT_SUBSCRIBER_WEIGHT", 10)
    wait_time = between(4, 6)

    def on_start(self) -> None:
        self.ids = itertools.count(1)
        self.replies: dict[int, AsyncResult] = {}
        self.last: dict[str, int] = {}
        self.stopping = False
        url = self.host.replace("http://", "ws://").replace("https://", "wss://") + "/ws"
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=10, enable_multithread=True)
        except Exception as exc:
            _fire(self.environment, "connect", started, exc=exc)
            raise
        _fire(self.environment, "connect", started)
        self.reader = gevent.spawn(self._read)
        self.command("authenticate", token=_token())
        channels = random.sample(CHANNELS, min(CHANNELS_PER_SUBSCRIBER, len(CHANNELS)))
        if FEEDS:
            channels.append(random.choice(FEEDS))
        for channel in channels:
            self.command("subscribe", channel=channel)
        TOTALS["subscribers"] += 1

    def command(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        """Send a command, wait for its reply and record it as ``WS <kind>``."""
        command_id = next(self.ids)
        waiter = self.replies[command_id] = AsyncResult()
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps({"id": command_id, "type": kind, **fields}))
            reply = waiter.get(timeout=10)
            if "error" in reply:
                raise RuntimeError(f"{reply['error'].get('code')}: {reply['error'].get('message')}")
        except Exception as exc:
            _fire(self.environment, kind, started, exc=exc)
            return None
        finally:
            self.replies.pop(command_id, None)
        _fire(self.environment, kind, started)
        result: dict[str, Any] = reply["result"]
        return result

    def _read(self) -> None:
        while True:
            try:
                text = self.ws.recv()
            except Exception as exc:
                if not self.stopping:
                    _fire(self.environment, "disconnect", time.perf_counter(), exc=exc)
                return
            if not text:
                continue
            message = json.loads(text)
            kind = message.get("type")
            if kind == "reply":
                result = message.get("result")
                if isinstance(result, dict) and "channel" in result and "offset" in result:
                    # A subscribe reply: its position is where this channel's stream starts.
                    # Set here, in order, not by the waiting greenlet, which may only run after
                    # the publications that follow the reply were already read.
                    self.last.setdefault(result["channel"], int(result["offset"]))
                waiter = self.replies.get(message.get("id"))
                if waiter is not None:
                    waiter.set(message)
            elif kind == "pub":
                self._publication(message, len(text))
            elif kind == "resync":
                self._lose(message["channel"], 1, "resync")

    def _publication(self, message: dict[str, Any], size: int) -> None:
        channel, offset = message["channel"], message["offset"]
        previous = self.last.get(channel)
        if previous is not None and offset <= previous:
            TOTALS["duplicates"] += 1
            return
        if previous is not None and offset != previous + 1:
            TOTALS["gaps"] += 1
            self._lose(channel, offset - previous - 1, "gap")
        self.last[channel] = offset
        TOTALS["received"] += 1
        data = message.get("data")
        stamp = data.get("t") if isinstance(data, dict) else None
        if isinstance(stamp, int):
            latency_ms = max(0.0, time.time() * 1000 - stamp / 1000)
            self.environment.events.request.fire(
                request_type="WS",
                name="publish->receive",
                response_time=latency_ms,
                response_length=size,
                exception=None,
                context={},
            )

    def _lose(self, channel: str, count: int, why: str) -> None:
        TOTALS["lost"] += count
        _fire(
            self.environment,
            "lost",
            time.perf_counter(),
            exc=LostPublications(f"{count} publication(s) of {channel} ({why})"),
        )

    @task
    def ping(self) -> None:
        self.command("ping")

    def on_stop(self) -> None:
        """Wait briefly for what was published, count the rest as lost, close."""
        if not hasattr(self, "ws"):
            return  # on_start failed (already reported)
        wanted = {ch: PUBLISHED[ch] for ch in self.last if ch in PUBLISHED}
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and any(
            self.last[ch] < offset for ch, offset in wanted.items()
        ):
            gevent.sleep(0.05)
        for channel, offset in wanted.items():
            if self.last[channel] < offset:
                self._lose(channel, offset - self.last[channel], "missing at stop")
        self.stopping = True
        self.ws.close()


class ChannelPublisher(FastHttpUser):
    """Publishes timestamped payloads through ``POST /api/v1/channels/{channel}/publish``."""

    weight = _env_int("LT_PUBLISHER_WEIGHT", 1)
    wait_time = constant_throughput(_env_float("LT_PUBLISH_RATE", 5.0))

    @task
    def publish(self) -> None:
        channel = random.choice(CHANNELS)
        data = {"t": int(time.time() * 1e6), "p": ""}
        data["p"] = "x" * max(0, PAYLOAD_BYTES - len(json.dumps(data, separators=(",", ":"))))
        with self.client.post(
            f"/api/v1/channels/{channel}/publish",
            json={"data": data},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            name="/api/v1/channels/[channel]/publish",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"publish answered {resp.status_code}")
                return
            offset = resp.json()["offset"]
            if offset > PUBLISHED.get(channel, 0):
                PUBLISHED[channel] = offset


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a Standard Webhooks message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookSender(FastHttpUser):
    """A strategy's sender: TradingView-style alerts and Standard-Webhooks-signed alerts."""

    weight = _env_int("LT_WEBHOOK_WEIGHT", 1)
    wait_time = constant_throughput(_env_float("LT_WEBHOOK_RATE", 2.0))

    def on_start(self) -> None:
        self.strategy: dict[str, Any] | None = None
        with self.client.post(
            "/api/v1/strategies",
            json={"name": f"locust {uuid.uuid4().hex[:8]}"},
            headers=_auth_headers(),
            catch_response=True,
        ) as resp:
            if resp.status_code != 201:
                resp.failure(f"create strategy answered {resp.status_code}")
                return
            self.strategy = resp.json()
        FEEDS.append(f"alerts:{self.strategy['id']}")

    def _alert(self) -> dict[str, Any]:
        return {
            "ticker": random.choice(["BTCUSD", "ETHUSD", "ES1!", "NQ1!"]),
            "action": random.choice(["buy", "sell"]),
            "price": round(random.uniform(10, 50_000), 2),
            "quantity": random.randint(1, 10),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "nonce": uuid.uuid4().hex,  # identical TradingView bodies would be de-duplicated
        }

    @task(2)
    def tradingview(self) -> None:
        if self.strategy is None:
            return
        secret = self.strategy["secrets"]["url_secret"]
        with self.client.post(
            f"/webhooks/tv/{secret}",
            json=self._alert(),
            name="/webhooks/tv/[secret]",
            catch_response=True,
        ) as resp:
            if not 200 <= resp.status_code < 300:
                resp.failure(f"tradingview webhook answered {resp.status_code}")

    @task(1)
    def signed(self) -> None:
        if self.strategy is None:
            return
        body = json.dumps(self._alert()).encode()
        msg_id = f"msg_{uuid.uuid4().hex}"
        stamp = int(time.time())
        signature = sign_standard_webhook(
            self.strategy["secrets"]["signing_secret"], msg_id, stamp, body
        )
        with self.client.post(
            f"/webhooks/alerts/{self.strategy['id']}",
            data=body,
            headers={
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature,
            },
            name="/webhooks/alerts/[strategy_id]",
            catch_response=True,
        ) as resp:
            if not 200 <= resp.status_code < 300:
                resp.failure(f"signed webhook answered {resp.status_code}")


class ApiUser(FastHttpUser):
    """CRUD on requests and proposals, then shortlist and accept (status changes publish)."""

    weight = _env_int("LT_API_WEIGHT", 1)
    wait_time = constant_throughput(_env_float("LT_API_RATE", 0.5))

    def _call(self, method: str, path: str, name: str, expect: int, **kw: Any) -> Any:
        with self.client.request(
            method, path, name=name, headers=_auth_headers(), catch_response=True, **kw
        ) as resp:
            if resp.status_code != expect:
                resp.failure(f"{method} {name} answered {resp.status_code}, wanted {expect}")
                return None
            return resp.json() if resp.text else {}

    @task
    def marketplace_round(self) -> None:
        created = self._call(
            "POST",
            "/api/v1/requests",
            "/api/v1/requests",
            201,
            json={
                "title": f"Load test request {uuid.uuid4().hex[:8]}",
                "description": "Created by the Locust load test.",
                "requirements": [{"name": "uptime", "priority": "must"}],
                "budget": "1000.00",
            },
        )
        if created is None:
            return
        request_id = created["id"]
        self._call("GET", f"/api/v1/requests/{request_id}", "/api/v1/requests/[id]", 200)
        self._call(
            "PATCH",
            f"/api/v1/requests/{request_id}",
            "/api/v1/requests/[id]",
            200,
            json={"description": "Edited by the Locust load test."},
        )
        proposal = self._call(
            "POST",
            f"/api/v1/requests/{request_id}/proposals",
            "/api/v1/requests/[id]/proposals",
            201,
            json={
                "price": "900.00",
                "summary": "We can do it.",
                "answers": [{"requirement": "uptime", "response": "99.9%"}],
            },
        )
        if proposal is None:
            return
        for status in ("shortlisted", "accepted"):
            self._call(
                "PUT",
                f"/api/v1/proposals/{proposal['id']}/status",
                "/api/v1/proposals/[id]/status",
                200,
                json={"status": status},
            )


@events.quitting.add_listener
def _summary(environment: Any, **_: Any) -> None:
    log.info("arena loadtest summary %s", json.dumps(TOTALS))
    if SUMMARY_FILE:
        with open(SUMMARY_FILE, "w") as out:
            json.dump({**TOTALS, "published": PUBLISHED}, out)
    if TOTALS["lost"]:
        environment.process_exit_code = 1
