"""The copy-paste examples of ``docs/clients.md`` run as written against the real service.

Each example is cut out of the Markdown, the two things a reader replaces by hand (the address
of ``python3 dev.py serve`` and ``<access token>``) are replaced, and it runs as its own process
with the real SDK: centrifuge-python under this interpreter, centrifuge-js under Node. The
publication is made exactly as the document's ``curl`` line makes it (same route, same body), and
the example must print it. A document that drifts from the service fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.centrifuge_js import NODE, NODE_MODULES, NODE_REQUIRED, install
from tests.helpers import DEADLINE, make_user, service_token

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
DEV_SERVER = "127.0.0.1:8080"


def _section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _block(section: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block"
    return match.group(1)


def _curl_publication() -> tuple[str, Any]:
    """The route and JSON body of the document's ``curl`` publish."""
    curl = re.search(r"```sh\n(curl .*?)```", DOC.read_text(), re.DOTALL)
    assert curl, "no curl block"
    curl_line = curl.group(1)
    route = re.search(rf"http://{re.escape(DEV_SERVER)}(/\S+)", curl_line)
    body = re.search(r"-d '(.*?)'", curl_line)
    assert route, curl_line
    assert body, curl_line
    return route.group(1), orjson.loads(body.group(1))


async def _run_example(client: Any, argv: list[str], cwd: Path, ready: str, expected: str) -> str:
    """Start the example; once it printed ``ready`` (everything it does after subscribing),
    publish as the document does; return its output once it printed ``expected`` (it runs until
    killed, as the document's examples do)."""
    route, body = _curl_publication()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(DEADLINE * 2):
            for step, marker in enumerate((ready, expected)):
                while not output or marker not in output[-1]:
                    line = await proc.stdout.readline()
                    assert line, f"the example stopped: {''.join(output)}"
                    output.append(line.decode())
                if step == 1:
                    break
                response = await client.post(
                    route,
                    json=body,
                    headers={"Authorization": f"Bearer {service_token(client)}"},
                )
                assert response.status == 200, await response.text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    return "".join(output)


def _fill(code: str, client: Any, token: str) -> str:
    assert DEV_SERVER in code
    assert "<access token>" in code
    return code.replace(DEV_SERVER, f"{client.host}:{client.port}").replace("<access token>", token)


async def test_the_python_example_prints_a_publication(client: Any, tmp_path: Path) -> None:
    _, token = await make_user(client, "admin")
    code = _block(_section("Python (centrifuge-python)"), "python")
    # The example prints only what it receives; say when it is subscribed so the test knows
    # when to publish (a line added after the subscribe, nothing else changes).
    code = code.replace(
        "    await sub.subscribe()\n",
        "    await sub.subscribe()\n    print('subscribed', flush=True)\n",
    )
    code = code.replace(
        "print(ctx.pub.offset, ctx.pub.data)", "print(ctx.pub.offset, ctx.pub.data, flush=True)"
    )
    script = tmp_path / "example.py"
    script.write_text(_fill(code, client, token))
    argv = [sys.executable, "-u", str(script)]
    out = await _run_example(client, argv, tmp_path, "presence_stats: ", "'price': 42}")
    assert "1 {'price': 42}" in out, out
    assert "108" in out, out


@pytest.mark.skipif(
    NODE is None and not NODE_REQUIRED, reason="Node.js is not installed (CI requires it)"
)
async def test_the_javascript_example_prints_a_publication(client: Any, tmp_path: Path) -> None:
    install()
    _, token = await make_user(client, "admin")
    code = _block(_section("JavaScript (centrifuge-js)"), "js")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    script = tmp_path / "example.mjs"
    script.write_text(_fill(code, client, token))
    assert NODE is not None
    argv = [NODE, "--experimental-websocket", "--no-warnings", str(script)]
    out = await _run_example(client, argv, tmp_path, "history 0 at offset 0", '{"price":42}')
    assert "subscribed, recovered? false false" in out, out
    assert '1 {"price":42}' in out, out
