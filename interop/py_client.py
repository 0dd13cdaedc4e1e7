"""py_client.py: a WebSocket client built on the Python package websockets
(10.x, as Debian ships it), the client side of sluice's interop tests
(interop_test.go).

Usage: /usr/bin/python3 py_client.py SCENARIO URL

Environment: INTEROP_CA, when set, is a PEM file of the roots to trust for
wss:// URLs.

It runs one scripted exchange and prints one JSON line: {"scenario",
"status", "protocol", "extensions", "sent": [{type, len, sha256}],
"received": [...], "close_code", "close_reason"}, or {"error"} and exit
status 1 when something failed. The scenarios are those of node_client.js;
"pings" is null: the library answers pings without telling.
"""

import asyncio
import hashlib
import json
import os
import ssl
import sys
import traceback

import websockets


def digest(message):
    data = message.encode() if isinstance(message, str) else message
    return {
        "type": "text" if isinstance(message, str) else "binary",
        "len": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def compressible_text(size):
    lines = []
    n = 0
    i = 0
    while n < size:
        line = "line %d: sluice relays this text without decoding it\n" % i
        lines.append(line)
        n += len(line)
        i += 1
    return "".join(lines)[:size]


# The messages each scenario sends; str is a text message, bytes a binary
# one, a list of str one text message in fragments.
PLANS = {
    "echo": lambda: ["hello, sluice \u2713", bytes(range(256))],
    "big": lambda: [os.urandom(4 << 20)],
    "fragmented": lambda: [["frag-one|", "frag-two|", "frag-three"]],
    "subprotocol": lambda: ["which protocol?"],
    "deflate": lambda: [compressible_text(1 << 20), os.urandom(64 << 10)],
    "client-close": lambda: [],
    "server-close": lambda: [],
    "reject": lambda: [],
    "wait": lambda: [],
    "too-big": lambda: [os.urandom(4096)],
    "ping": lambda: ["ping one", "ping two"],
}


async def run(scenario, url):
    messages = PLANS[scenario]()
    result = {"scenario": scenario, "status": 0, "sent": [], "received": [], "pings": None}
    kwargs = {
        "compression": "deflate" if scenario == "deflate" else None,
        "max_size": None,
        "ping_interval": None,
        "open_timeout": 10,
        "close_timeout": 10,
    }
    if scenario == "subprotocol":
        kwargs["subprotocols"] = ["chat.v1", "chat.v2"]
    if url.startswith("wss:"):
        kwargs["ssl"] = ssl.create_default_context(cafile=os.environ.get("INTEROP_CA"))
    try:
        ws = await websockets.connect(url, **kwargs)
    except websockets.InvalidStatusCode as e:
        result["status"] = e.status_code
        result["refused_by"] = e.headers.get("X-Refused-By", "")
        return result
    result["status"] = 101
    result["protocol"] = ws.subprotocol or ""
    result["extensions"] = ",".join(e.name for e in ws.extensions)
    if scenario == "client-close":
        await ws.close(4000, "bye")
    elif scenario in ("server-close", "wait", "too-big"):
        # The other side closes; the library answers its close frame.
        if scenario == "wait":
            sys.stdout.write(json.dumps({"open": True}) + "\n")
            sys.stdout.flush()
        try:
            for m in messages:
                await ws.send(m)
                result["sent"].append(digest(m))
        except websockets.ConnectionClosed:
            pass
    else:
        for i, m in enumerate(messages):
            if scenario == "ping" and i > 0:
                # Time for the proxy's pings, which the library answers.
                await asyncio.sleep(0.8)
            await ws.send(m)
            result["sent"].append(digest("".join(m) if isinstance(m, list) else m))
        try:
            for _ in messages:
                result["received"].append(digest(await ws.recv()))
        except websockets.ConnectionClosed:
            pass
        await ws.close(1000, "done")
    await ws.wait_closed()
    result["close_code"] = ws.close_code
    result["close_reason"] = ws.close_reason
    return result


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in PLANS:
        sys.stderr.write("usage: py_client.py SCENARIO URL (SCENARIO one of %s)\n" % ", ".join(PLANS))
        sys.exit(2)
    scenario, url = sys.argv[1:]
    try:
        result = asyncio.run(run(scenario, url))
    except Exception:
        sys.stdout.write(json.dumps({"scenario": scenario, "error": traceback.format_exc()}) + "\n")
        sys.exit(1)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
