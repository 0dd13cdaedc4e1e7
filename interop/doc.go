// Package interop holds sluice's interoperability tests: sluice, started
// in-process from a YAML configuration, proxies WebSocket sessions between
// real third-party implementations — Node's ws (npm) and Python's websockets
// (Debian's python3-websockets) — on both ends.
//
// The peers are small scripts in this directory (node_server.js,
// node_client.js, py_server.py, py_client.py). Each client run does one
// scripted exchange and prints a JSON result; each server prints a JSON line
// per connection it saw. The tests compare both with sluice's access log.
//
// To run them locally:
//
//	apt-get install python3-websockets   # for /usr/bin/python3
//	(cd interop && npm ci)
//	go test ./interop
//
// Without those peers the tests skip, except under CI=true, where they fail.
// The package has no non-test code.
package interop
