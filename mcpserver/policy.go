package mcpserver

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
)

// grant describes one consent the model asks for.
type grant struct {
	tool    string
	args    any                    // the tool's input, bound into an ask-mode approval
	keys    []addressing.PublicKey // the peer keys it grants access to, if known
	node    addressing.NodeID      // the peer's node, if only its address is known
	what    string                 // what is granted, in one sentence: only what the daemon knows or validated, never peer text
	note    string                 // the peer's note on the request (trust_approve): peer text, kept apart from what
	command []string               // the CLI command the operator can run instead
}

// noteMax bounds a trust request's note in an elicitation message (the
// daemon's own limit for notes, trustdb.MaxNoteLen).
const noteMax = 256

// consentTTL bounds how long an ask-mode approval may be used.
const consentTTL = 10 * time.Minute

// consent returns nil if the policy lets the model make this grant now.
// Otherwise it returns consent_required (with the operator's command),
// consent_declined, or a needInput that asks the human (Approve "ask").
func (s *Server) consent(ctx context.Context, req *mcp.CallToolRequest, g grant) error {
	p := s.cfg.Policy
	if p.Approve == ApproveAllow {
		return nil
	}
	if ok, err := s.allowlisted(ctx, g); err != nil {
		return err
	} else if ok {
		return nil
	}
	argsJSON, _ := json.Marshal(g.args)
	// The peer's note never goes into an error's message: the model reads
	// it only under untrusted, as with every other peer text.
	var untrusted *ErrorUntrusted
	if g.note != "" {
		untrusted = &ErrorUntrusted{Note: ptr(boundString(g.note, p.maxData()))}
	}
	if p.Approve == ApproveAsk {
		if resp, ok := req.Params.InputResponses["consent"]; ok {
			if !s.checkState(req.Params.RequestState, g.tool, argsJSON) {
				return errorf(CodeConsentDeclined, "call the tool again to ask the operator", "the approval does not match this request or has expired")
			}
			er, _ := resp.(*mcp.ElicitResult)
			if er != nil && er.Action == "accept" && er.Content["approve"] == true {
				return nil
			}
			action := "no answer"
			if er != nil {
				action = er.Action
			}
			return &toolError{Code: CodeConsentDeclined, Message: fmt.Sprintf("the operator did not approve: %s (%s)", g.what, action),
				Hint: "do not retry unless the operator asks you to", Untrusted: untrusted}
		}
		if supportsElicitation(req) {
			// The elicitation goes to the human, not to the model: the
			// host shows it to the operator, whose answer comes back only
			// as accept/decline. The note is there because the human
			// deciding may need it (who the requester says it is), quoted
			// and marked as the peer's unverified words, after what the
			// daemon itself knows, so it cannot pass for the daemon's text.
			msg := "agentnet: your agent asks to " + g.what + "."
			if g.note != "" {
				msg += fmt.Sprintf(" The requester's note (written by the peer, unverified): %q.", truncate(g.note, noteMax))
			}
			return needInput{&mcp.CallToolResult{
				InputRequests: mcp.InputRequestMap{"consent": &mcp.ElicitParams{
					Mode:    "form",
					Message: msg + " Approve?",
					RequestedSchema: map[string]any{
						"type": "object",
						"properties": map[string]any{
							"approve": map[string]any{"type": "boolean", "title": "Approve", "description": g.what},
						},
						"required": []string{"approve"},
					},
				}},
				RequestState: s.newState(g.tool, argsJSON),
			}}
		}
	}
	cmd := s.operatorCommand(ctx, g.command)
	hint := "only the operator can grant this: ask them to run the command"
	if p.Approve == ApproveAsk {
		hint = "this MCP client cannot ask the operator (no elicitation support): ask them to run the command"
	}
	return &toolError{Code: CodeConsentRequired, Message: fmt.Sprintf("the operator's policy (--approve=%s) does not let this session %s", p.Approve, g.what),
		Hint: hint, Command: cmd, Untrusted: untrusted}
}

func supportsElicitation(req *mcp.CallToolRequest) bool {
	if req.Session == nil {
		return false
	}
	ip := req.Session.InitializeParams()
	return ip != nil && ip.Capabilities != nil && ip.Capabilities.Elicitation != nil
}

// allowlisted reports whether the grant is to a key the operator allowed,
// or to a member of a network the operator allowed.
func (s *Server) allowlisted(ctx context.Context, g grant) (bool, error) {
	p := s.cfg.Policy
	for _, k := range g.keys {
		if slices.Contains(p.AllowKeys, k) {
			return true, nil
		}
	}
	if g.node.IsZero() && len(g.keys) == 0 {
		return false, nil
	}
	if !g.node.IsZero() {
		for _, k := range p.AllowKeys {
			if k.NodeID() == g.node {
				return true, nil
			}
		}
	}
	if len(p.AllowNetworks) == 0 || g.tool == "network_invite" || g.tool == "network_join" {
		return false, nil
	}
	for _, n := range p.AllowNetworks {
		var ms ctl.NetworkMembers
		err := s.c.Do(ctx, http.MethodGet, ctl.NetworkPath(n, ""), nil, &ms)
		if ctl.CodeOf(err) == ctl.CodeNotFound {
			continue // not (or no longer) a member: allows nothing
		}
		if err != nil {
			return false, err
		}
		for _, m := range ms.Members {
			if m.Self {
				continue
			}
			k, err := addressing.ParsePublicKey(m.Key)
			if err != nil {
				continue
			}
			if slices.Contains(g.keys, k) || !g.node.IsZero() && k.NodeID() == g.node {
				return true, nil
			}
		}
	}
	return false, nil
}

// newState binds an ask-mode approval to the tool, its arguments and a
// deadline: base64(expiry ‖ nonce ‖ HMAC-SHA256(secret, tool ‖ 0 ‖ args ‖
// expiry ‖ nonce)). Each state is good for one use.
func (s *Server) newState(tool string, args []byte) string {
	var head [8 + 16]byte
	binary.BigEndian.PutUint64(head[:8], uint64(time.Now().Add(consentTTL).Unix()))
	rand.Read(head[8:])
	return base64.RawURLEncoding.EncodeToString(append(head[:], s.stateMAC(tool, args, head[:])...))
}

func (s *Server) stateMAC(tool string, args, head []byte) []byte {
	m := hmac.New(sha256.New, s.secret[:])
	m.Write([]byte(tool))
	m.Write([]byte{0})
	m.Write(args)
	m.Write(head)
	return m.Sum(nil)
}

// stateExpiry returns the expiry of a well-formed state.
func stateExpiry(b []byte) time.Time { return time.Unix(int64(binary.BigEndian.Uint64(b[:8])), 0) }

// checkState verifies a request state and uses it up.
func (s *Server) checkState(state, tool string, args []byte) bool {
	b, err := base64.RawURLEncoding.DecodeString(state)
	if err != nil || len(b) != 24+sha256.Size {
		return false
	}
	if !hmac.Equal(b[24:], s.stateMAC(tool, args, b[:24])) || time.Now().After(stateExpiry(b)) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, used := s.consents[state]; used {
		return false
	}
	// Forget states past their expiry so the set stays bounded (at most
	// what one session can create in consentTTL).
	if len(s.consents) > 1024 {
		for k := range s.consents {
			if kb, err := base64.RawURLEncoding.DecodeString(k); err == nil && len(kb) >= 8 && time.Now().After(stateExpiry(kb)) {
				delete(s.consents, k)
			}
		}
	}
	s.consents[state] = struct{}{}
	return true
}

// operatorCommand renders the CLI command, with the daemon's state
// directory so it acts on this daemon.
func (s *Server) operatorCommand(ctx context.Context, args []string) string {
	parts := []string{"agentnet"}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	var st ctl.Status
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.c.Do(cctx, http.MethodGet, ctl.PathStatus, nil, &st); err == nil && st.StateDir != "" {
		parts = append(parts, "--state", shellQuote(st.StateDir))
	} else {
		parts = append(parts, "--socket", shellQuote(s.c.Socket()))
	}
	return strings.Join(parts, " ")
}

// shellQuote quotes s for a POSIX shell unless it is plainly safe.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.,:/=@+%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ParseApprove parses a --approve value.
func ParseApprove(s string) (Approve, error) {
	switch a := Approve(s); a {
	case ApproveNever, ApproveAsk, ApproveAllow:
		return a, nil
	}
	return "", fmt.Errorf("approve %s: want never, ask or allow", strconv.Quote(s))
}
