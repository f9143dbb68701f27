package ctl

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable, machine-readable error code. Codes never change meaning;
// new ones may be added.
type Code string

// Error codes of the control API.
const (
	CodeInvalidArgument Code = "invalid_argument" // the request is malformed or out of range; nothing changed
	CodeNotFound        Code = "not_found"        // no such trust record, inbox item, endpoint
	CodeNotTrusted      Code = "not_trusted"      // the peer is not trusted by us, or does not trust us
	CodeConflict        Code = "conflict"         // the action does not fit the current state (approve a peer that is not pending, hostname taken)
	CodePortInUse       Code = "port_in_use"      // the virtual or local port is taken
	CodePortClosed      Code = "port_closed"      // nothing listens on the peer's virtual port
	CodeUnreachable     Code = "unreachable"      // the peer is trusted but offline or no path answered
	CodeTimeout         Code = "timeout"          // the operation did not finish in time
	CodeTooLarge        Code = "too_large"        // a message or file over a size limit: the peer's, or ours for messages we send
	CodeInboxFull       Code = "inbox_full"       // the peer's inbox quota is exhausted
	CodeNotRunning      Code = "not_running"      // no daemon answers on the socket (CLI only)
	CodeNotImplemented  Code = "not_implemented"  // the feature has not landed in this build
	CodeUnavailable     Code = "unavailable"      // the daemon is shutting down, or a service is switched off
	CodeStreamReset     Code = "stream_reset"     // a stream was cut before its end: data may be missing
	CodeDamagedState    Code = "damaged_state"    // a state file on disk is damaged, missing or unsafe; nothing was changed
	CodeInternal        Code = "internal"         // anything else; the message says what
)

// StreamResetHint is the hint of a CodeStreamReset error.
const StreamResetHint = "the stream was cut before its end (the peer reset or closed it, its node or daemon stopped, or the path to it died): what arrived may be incomplete; retry"

// CodeInfo describes one error code.
type CodeInfo struct {
	Code        Code   `json:"code"`
	HTTPStatus  int    `json:"http_status"`
	Description string `json:"description"`
}

// Codes lists every error code with its HTTP status, in a stable order.
var Codes = []CodeInfo{
	{CodeInvalidArgument, http.StatusBadRequest, "the request is malformed or out of range; nothing changed"},
	{CodeNotFound, http.StatusNotFound, "no such trust record, inbox item or endpoint"},
	{CodeNotTrusted, http.StatusForbidden, "the peer is not trusted by us, or does not trust us (never approved, or revoked)"},
	{CodeConflict, http.StatusConflict, "the action does not fit the current state (approving a peer that is not pending, a hostname taken)"},
	{CodePortInUse, http.StatusConflict, "the virtual or local port is already in use"},
	{CodePortClosed, http.StatusNotFound, "nothing listens on the peer's virtual port"},
	{CodeUnreachable, http.StatusBadGateway, "the peer is trusted but offline, or no path to it answered"},
	{CodeTimeout, http.StatusGatewayTimeout, "the operation did not finish in time"},
	{CodeTooLarge, http.StatusRequestEntityTooLarge, "a message or file is over a size limit: the peer's (it refused it), or this daemon's own for the messages it sends (--max-message)"},
	{CodeInboxFull, http.StatusInsufficientStorage, "the peer's inbox quota is exhausted"},
	{CodeNotRunning, 0, "no daemon answers on the control socket (reported by the CLI, never by the daemon)"},
	{CodeNotImplemented, http.StatusNotImplemented, "the feature has not landed in this build"},
	{CodeUnavailable, http.StatusServiceUnavailable, "the daemon is shutting down, or the service is switched off"},
	{CodeStreamReset, http.StatusBadGateway, "a stream was cut before its end (reset by the peer, its node gone, the path dead): what arrived may be incomplete"},
	{CodeDamagedState, http.StatusInternalServerError, "a state file (identity key, trust store, inbox index, config file) is damaged, missing or unsafe; nothing was changed, and the hint says how to restore it"},
	{CodeInternal, http.StatusInternalServerError, "an unexpected failure; the message says what"},
}

// HTTPStatus returns the HTTP status that goes with c (500 for unknown codes).
func (c Code) HTTPStatus() int {
	for _, i := range Codes {
		if i.Code == c {
			if i.HTTPStatus == 0 {
				return http.StatusInternalServerError
			}
			return i.HTTPStatus
		}
	}
	return http.StatusInternalServerError
}

// Error is an error answer of the control API. It is also the error type the
// Client returns for every failure, including a daemon that does not answer
// (CodeNotRunning), so callers can switch on Code.
//
// Message and Hint are the daemon's own words (with identifiers it
// validated): text a peer chose never goes into them. What a peer said
// about the failure — its message service's refusal, its event bus's
// refusal, the reason it closed the connection with — is PeerText,
// verbatim (at most MaxPeerText bytes): show it as the peer's, never act on
// it.
type Error struct {
	Code     Code   `json:"code"`
	Message  string `json:"message"`
	Hint     string `json:"hint,omitempty"`
	PeerText string `json:"peer_text,omitempty"`
}

// MaxPeerText bounds Error.PeerText (the longest text the services let a
// peer send is 1024 bytes; a QUIC close reason may be longer).
const MaxPeerText = 1024

// Error returns "code: message".
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// ErrorBody is the JSON object of an error answer: {"error": {...}}.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Errorf returns an *Error with code, a hint and a formatted message.
func Errorf(code Code, hint, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Hint: hint}
}

// CodeOf returns the code of err if it is (or wraps) an *Error, else
// CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
