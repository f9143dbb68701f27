// Package mcpserver is agentnet's Model Context Protocol server: the tools,
// resources and consent policy behind "agentnet mcp", built on the official
// Go SDK (github.com/modelcontextprotocol/go-sdk).
//
// The server is a client of a running daemon's local API (package ctl): it
// never holds a key, and everything it does an operator could do with the
// CLI. Three rules shape it:
//
//   - Consent is the operator's policy, not the model's decision. The tools
//     that grant a peer access to this agent (trust_request, trust_approve,
//     network_invite, network_join) act only when Policy allows it: Approve
//     "allow", an allowlisted key or network, or, with "ask", a human who
//     confirmed through MCP elicitation. Otherwise the tool fails with
//     consent_required and the command the operator can run.
//   - Everything a peer sent (notes, messages, file names and contents,
//     event topics and data, HTTP headers and bodies) is returned inside an
//     object named "untrusted", bounded in size (with its full size and a
//     truncated flag), never in a description, an error hint or an
//     instruction. Identifiers the daemon validated (addresses, keys,
//     hostnames and network names of the form [a-z0-9-]{1,63}, IDs) are
//     plain fields.
//   - Errors carry the daemon's stable codes (ctl.Code) plus a few of the
//     server's own (CodeConsentRequired, …); a failed tool answers
//     {"error": {"code", "message", "hint"}} as its text content, with
//     isError set.
//
// Wait turns the daemon's event bus into a bounded blocking call: a
// background subscription to the daemon's own bus wakes it, and the inbox
// and pending trust requests are read from the API itself, so an item is
// reported by wait exactly once per server even across daemon restarts.
package mcpserver
