// Package daemon runs an agentnet node as a long-lived daemon: it opens the
// state directory (identity, trust store, inbox), finds or starts a
// rendezvous, starts the quicnode.Node and the built-in services (echo,
// discard, messages, events; see package service), and serves the control
// API (package ctl) as HTTP+JSON on a Unix socket with mode 0600.
//
// # Zero-config rendezvous
//
// With no rendezvous configured the daemon uses Config.LocalRendezvous
// (127.0.0.1:7420). If nothing holds that UDP port it starts an embedded
// rendezvous there, with its state in a per-user directory, so every daemon
// of the user on the machine shares one rendezvous with one identity; the
// nodes pin its key on first use. A daemon that finds the port taken uses
// whatever serves there. If the hosting daemon exits, another one takes the
// port over within a few seconds (same state directory, so the same key and
// registry), and the nodes reconnect by themselves.
//
// # Streaming endpoints
//
// /v1/connect switches the HTTP connection to a raw byte stream bridged to a
// virtual-port stream, with half-close carried both ways. /v1/recv,
// /v1/expose, /v1/forward and /v1/events/subscribe answer JSON Lines and keep
// what they set up (a listener, a forward, a subscription) alive exactly as
// long as the request: the client closing the connection tears it down.
//
// # Lifecycle
//
// New checks the Config and does no I/O; Run does everything and returns
// after a clean shutdown once its context ends. A second daemon on the same
// state directory fails in Run with an error wrapping trustdb.ErrInUse.
//
// Log keys: peer, port, addr, err, remote, path, method, socket, server,
// mode, key, component.
package daemon
