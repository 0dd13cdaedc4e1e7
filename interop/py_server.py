"""py_server.py: a WebSocket server built on the Python package websockets
(10.x, as Debian ships it), the upstream side of sluice's interop tests
(interop_test.go).

Usage: /usr/bin/python3 py_server.py

It listens on 127.0.0.1 on a port chosen by the system and prints
"listening PORT" once it accepts connections. Each request path is
/SCENARIO/ID; the scenario picks the behaviour:

  reject        refuse the handshake with 403 (header X-Refused-By: py)
  server-close  close at once with 4001 "server bye"
  fragmented    echo each message back in three fragments
  anything else echo each message back as it came

Subprotocol chat.v2 is chosen when offered; permessage-deflate is accepted
when offered. When a connection ends (or is refused) it prints one JSON line:
{"id", "scenario", "offered_protocols", "protocol", "extensions",
"received": [{type, len, sha256}], "close_code", "close_reason"} or
{"id", "scenario", "rejected": 403}.
"""

import asyncio
import hashlib
import http
import json
import os
import sys
import threading

import websockets


def digest(message):
    data = message.encode() if isinstance(message, str) else message
    return {
        "type": "text" if isinstance(message, str) else "binary",
        "len": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def report(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def split_path(path):
    parts = path.split("?")[0].split("/")
    scenario = parts[1] if len(parts) > 1 else ""
    ident = parts[2] if len(parts) > 2 else ""
    return scenario, ident


async def process_request(path, headers):
    scenario, ident = split_path(path)
    if scenario == "reject":
        report({"id": ident, "scenario": scenario, "rejected": 403})
        return (
            http.HTTPStatus.FORBIDDEN,
            [("X-Refused-By", "py"), ("Content-Type", "text/plain")],
            b"refused by py\n",
        )
    return None


async def handler(ws):
    scenario, ident = split_path(ws.path)
    received = []
    if scenario == "server-close":
        await ws.close(4001, "server bye")
    else:
        try:
            async for message in ws:
                received.append(digest(message))
                if scenario == "fragmented":
                    third = -(-len(message) // 3)
                    await ws.send([message[i * third:(i + 1) * third] for i in range(3)])
                else:
                    await ws.send(message)
        except websockets.ConnectionClosed:
            pass
    await ws.wait_closed()
    report({
        "id": ident,
        "scenario": scenario,
        "offered_protocols": ", ".join(ws.request_headers.get_all("Sec-WebSocket-Protocol")),
        "protocol": ws.subprotocol or "",
        "extensions": ",".join(e.name for e in ws.extensions),
        "received": received,
        "pings_pongs": None,  # the library handles them without telling
        "close_code": ws.close_code,
        "close_reason": ws.close_reason,
    })


def exit_when_stdin_closes():
    # The test kills this process when it is done; a closed stdin (the test
    # process gone) ends it too.
    sys.stdin.buffer.read()
    os._exit(0)


async def main():
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    async with websockets.serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=["chat.v2"],
        process_request=process_request,
        compression="deflate",
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        report_line = "listening %d\n" % port
        sys.stdout.write(report_line)
        sys.stdout.flush()
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
