// Package ctl is the local control API of an agentnet daemon: the request and
// response types of every endpoint, the stable error codes, and a Client that
// speaks HTTP+JSON over the daemon's Unix socket.
//
// The daemon (package daemon) serves the API; the agentnet CLI and any other
// program drive it, in Go through Client or in any language with an HTTP
// client that can dial a Unix socket (curl --unix-socket).
//
// Conventions: every response is one JSON object; an error is
//
//	{"error": {"code": "not_trusted", "message": "...", "hint": "..."}}
//
// with a stable code (see the Code constants) and a matching HTTP status.
// Streaming endpoints answer JSON Lines (one object per line,
// Content-Type application/x-ndjson) once they are set up, or a plain error
// object if setup fails. The byte-stream endpoint (/v1/connect) switches
// protocols: after "101 Switching Protocols" the socket carries the raw
// stream in both directions, half-close included.
package ctl
