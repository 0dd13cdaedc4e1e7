// node_client.js: a WebSocket client built on the npm package ws, the client
// side of sluice's interop tests (interop_test.go).
//
// Usage: node node_client.js SCENARIO URL
//
// Environment: INTEROP_CA, when set, is a PEM file of the roots to trust for
// wss:// URLs.
//
// It runs one scripted exchange and prints one JSON line: {"scenario",
// "status", "protocol", "extensions", "sent": [{type, len, sha256}],
// "received": [...], "close_code", "close_reason", "refused_by",
// "refused_body"}, or {"error"} and exit status 1 when something failed.
//
// Scenarios (each closes with 1000 when done unless said otherwise):
//
//   echo          a text and a binary message
//   big           one 4 MiB binary message
//   fragmented    one text message sent in three fragments
//   subprotocol   offers chat.v1 and chat.v2, then one text message
//   deflate       offers permessage-deflate; 1 MiB of text and 64 KiB random
//   client-close  closes at once with 4000 "bye"
//   server-close  waits for the server to close
//   reject        expects the handshake to be refused
//   wait          prints {"open": true} once open, then waits for the other
//                 side to close
//   too-big       one 4 KiB binary message, then waits for the other side to
//                 close
//   ping          two text messages 800 ms apart (time for the proxy's pings)
//
// "pings" in the result counts the pings the client got.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const WebSocket = require('ws');

const [scenario, url] = process.argv.slice(2);
if (!scenario || !url) {
  process.stderr.write('usage: node node_client.js SCENARIO URL\n');
  process.exit(2);
}

function digest(data, isBinary) {
  return {
    type: isBinary ? 'binary' : 'text',
    len: data.length,
    sha256: crypto.createHash('sha256').update(data).digest('hex'),
  };
}

function fail(err) {
  process.stdout.write(JSON.stringify({ scenario, error: String(err && err.stack ? err.stack : err) }) + '\n');
  process.exit(1);
}

function compressibleText(size) {
  const lines = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    const line = `line ${i}: sluice relays this text without decoding it\n`;
    lines.push(line);
    n += line.length;
  }
  return lines.join('').slice(0, size);
}

// The messages each scenario sends; a string is a text message, a Buffer a
// binary one, an array of strings one text message in fragments.
const plans = {
  echo: () => ['hello, sluice \u2713', Buffer.from(Array.from({ length: 256 }, (_, i) => i))],
  big: () => [crypto.randomBytes(4 << 20)],
  fragmented: () => [['frag-one|', 'frag-two|', 'frag-three']],
  subprotocol: () => ['which protocol?'],
  deflate: () => [compressibleText(1 << 20), crypto.randomBytes(64 << 10)],
  'client-close': () => [],
  'server-close': () => [],
  reject: () => [],
  wait: () => [],
  'too-big': () => [crypto.randomBytes(4096)],
  ping: () => ['ping one', 'ping two'],
};
if (!plans[scenario]) fail(`unknown scenario ${JSON.stringify(scenario)}`);
const messages = plans[scenario]();

const options = { perMessageDeflate: scenario === 'deflate', family: 4 };
if (process.env.INTEROP_CA) options.ca = fs.readFileSync(process.env.INTEROP_CA);
const protocols = scenario === 'subprotocol' ? ['chat.v1', 'chat.v2'] : [];

const result = { scenario, status: 0, sent: [], received: [], pings: 0 };
const ws = new WebSocket(url, protocols, options);

ws.on('upgrade', (res) => {
  result.status = res.statusCode;
});

ws.on('unexpected-response', (req, res) => {
  result.status = res.statusCode;
  result.refused_by = res.headers['x-refused-by'] || '';
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    result.refused_body = Buffer.concat(chunks).toString();
    process.stdout.write(JSON.stringify(result) + '\n');
    process.exit(0);
  });
  res.on('error', fail);
});

ws.on('error', fail);

function send(m) {
  if (Array.isArray(m)) {
    m.forEach((part, i) => ws.send(part, { fin: i === m.length - 1 }));
    result.sent.push(digest(Buffer.from(m.join('')), false));
  } else {
    const isBinary = Buffer.isBuffer(m);
    ws.send(m, { binary: isBinary });
    result.sent.push(digest(isBinary ? m : Buffer.from(m), isBinary));
  }
}

ws.on('open', () => {
  result.protocol = ws.protocol;
  result.extensions = ws.extensions;
  switch (scenario) {
    case 'client-close':
      ws.close(4000, 'bye');
      break;
    case 'wait':
      process.stdout.write(JSON.stringify({ open: true }) + '\n');
      break;
    case 'ping':
      send(messages[0]);
      setTimeout(() => send(messages[1]), 800);
      break;
    default:
      messages.forEach(send);
  }
});

ws.on('ping', () => {
  result.pings++;
});

ws.on('message', (data, isBinary) => {
  result.received.push(digest(data, isBinary));
  if (result.received.length === messages.length) {
    ws.close(1000, 'done');
  }
});

ws.on('close', (code, reason) => {
  result.close_code = code;
  result.close_reason = reason.toString();
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
});
