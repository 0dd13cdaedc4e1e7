// node_server.js: a WebSocket server built on the npm package ws, the
// upstream side of sluice's interop tests (interop_test.go).
//
// Usage: node node_server.js
//
// It listens on 127.0.0.1 on a port chosen by the system and prints
// "listening PORT" once it accepts connections. Each request path is
// /SCENARIO/ID; the scenario picks the behaviour:
//
//   reject        refuse the handshake with 403 (header X-Refused-By: node)
//   server-close  close at once with 4001 "server bye"
//   fragmented    echo each message back in three fragments
//   anything else echo each message back as it came
//
// Subprotocol chat.v2 is chosen when offered; permessage-deflate is accepted
// when offered. When a connection ends (or is refused) it prints one JSON
// line: {"id", "scenario", "offered_protocols", "protocol", "extensions",
// "received": [{type, len, sha256}], "pings_pongs", "close_code",
// "close_reason"} or {"id", "scenario", "rejected": 403}. pings_pongs counts
// the ping and pong frames that reached the server.
'use strict';

const crypto = require('crypto');
const http = require('http');
const { WebSocketServer } = require('ws');

function digest(data, isBinary) {
  return {
    type: isBinary ? 'binary' : 'text',
    len: data.length,
    sha256: crypto.createHash('sha256').update(data).digest('hex'),
  };
}

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: true,
  handleProtocols: (protocols) => (protocols.has('chat.v2') ? 'chat.v2' : false),
});

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('websocket only\n');
});

server.on('upgrade', (req, socket, head) => {
  const [, scenario = '', id = ''] = req.url.split('?')[0].split('/');
  if (scenario === 'reject') {
    const body = 'refused by node\n';
    socket.end(
      'HTTP/1.1 403 Forbidden\r\n' +
        'X-Refused-By: node\r\n' +
        'Content-Type: text/plain\r\n' +
        `Content-Length: ${body.length}\r\n` +
        'Connection: close\r\n\r\n' +
        body,
    );
    report({ id, scenario, rejected: 403 });
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const received = [];
    let controls = 0;
    ws.on('ping', () => controls++);
    ws.on('pong', () => controls++);
    ws.on('message', (data, isBinary) => {
      received.push(digest(data, isBinary));
      if (scenario === 'fragmented') {
        const third = Math.ceil(data.length / 3);
        for (let i = 0; i < 3; i++) {
          const part = data.subarray(i * third, (i + 1) * third);
          ws.send(part, { binary: isBinary, fin: i === 2 });
        }
      } else {
        ws.send(data, { binary: isBinary });
      }
    });
    ws.on('close', (code, reason) => {
      report({
        id,
        scenario,
        offered_protocols: req.headers['sec-websocket-protocol'] || '',
        protocol: ws.protocol,
        extensions: ws.extensions,
        received,
        pings_pongs: controls,
        close_code: code,
        close_reason: reason.toString(),
      });
    });
    if (scenario === 'server-close') {
      ws.close(4001, 'server bye');
    }
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

// The test kills this process when it is done; a closed stdin (the test
// process gone) ends it too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
