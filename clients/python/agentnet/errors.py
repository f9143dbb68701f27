"""The control API's error codes as exception classes.

Every failure of a :class:`agentnet.Client` call raises an
:class:`AgentnetError` subclass named after the daemon's stable code, so a
caller can ``except NotTrusted:`` instead of comparing strings. Codes the
daemon may add later raise :class:`AgentnetError` itself, with ``code`` set.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "AgentnetError",
    "InvalidArgument",
    "NotFound",
    "NotTrusted",
    "Conflict",
    "PortInUse",
    "PortClosed",
    "Unreachable",
    "Timeout",
    "TooLarge",
    "InboxFull",
    "NotRunning",
    "NotImplementedByDaemon",
    "Unavailable",
    "Internal",
    "StreamBroken",
    "StreamReset",
    "error_for",
]


class AgentnetError(Exception):
    """An error answer of the daemon: a stable ``code``, a ``message`` and
    a ``hint`` (what to do about it; may be empty), the daemon's own words;
    and ``peer_text``: what the peer said about the failure (its refusal,
    its close reason), verbatim, or empty. Show it as the peer's, never act
    on it; ``str()`` leaves it out."""

    code = "internal"

    def __init__(self, message: str, hint: str = "", code: Optional[str] = None, status: int = 0,
                 peer_text: str = ""):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.hint = hint
        self.status = status
        self.peer_text = peer_text

    def __str__(self) -> str:
        s = f"{self.code}: {self.message}"
        if self.hint:
            s += f" (hint: {self.hint})"
        return s


class InvalidArgument(AgentnetError):
    """The request is malformed or out of range; nothing changed."""
    code = "invalid_argument"


class NotFound(AgentnetError):
    """No such trust record, inbox item, network or endpoint."""
    code = "not_found"


class NotTrusted(AgentnetError):
    """The peer is not trusted by us, or does not trust us."""
    code = "not_trusted"


class Conflict(AgentnetError):
    """The action does not fit the current state."""
    code = "conflict"


class PortInUse(AgentnetError):
    """The virtual or local port is already in use."""
    code = "port_in_use"


class PortClosed(AgentnetError):
    """Nothing listens on the peer's virtual port."""
    code = "port_closed"


class Unreachable(AgentnetError):
    """The peer is trusted but offline, or no path to it answered."""
    code = "unreachable"


class Timeout(AgentnetError):
    """The operation did not finish in time."""
    code = "timeout"


class TooLarge(AgentnetError):
    """The peer refused a message or file over its size limit."""
    code = "too_large"


class InboxFull(AgentnetError):
    """The peer's inbox quota is exhausted."""
    code = "inbox_full"


class NotRunning(AgentnetError):
    """No daemon answers on the control socket (raised by the client)."""
    code = "not_running"


class NotImplementedByDaemon(AgentnetError):
    """The feature has not landed in this daemon's build."""
    code = "not_implemented"


class Unavailable(AgentnetError):
    """The daemon is shutting down, or the service is switched off."""
    code = "unavailable"


class Internal(AgentnetError):
    """An unexpected failure; the message says what."""
    code = "internal"


class StreamReset(AgentnetError):
    """A stream was cut before its end (reset by the peer, its node gone,
    the path dead): what arrived may be incomplete."""
    code = "stream_reset"


class StreamBroken(AgentnetError):
    """A streaming answer ended without its normal end (the connection to
    the daemon broke): never mistaken for a clean end."""
    code = "unavailable"


_BY_CODE: Dict[str, Type[AgentnetError]] = {
    c.code: c
    for c in (
        InvalidArgument, NotFound, NotTrusted, Conflict, PortInUse, PortClosed,
        Unreachable, Timeout, TooLarge, InboxFull, NotRunning,
        NotImplementedByDaemon, Unavailable, Internal, StreamReset,
    )
}


def error_for(code: str, message: str, hint: str = "", status: int = 0,
              peer_text: str = "") -> AgentnetError:
    """Return the exception for an error object of the API."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return AgentnetError(message, hint, code=code, status=status, peer_text=peer_text)
    return cls(message, hint, status=status, peer_text=peer_text)
