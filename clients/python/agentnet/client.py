"""A client of the agentnet daemon's local API (HTTP+JSON on a Unix
socket), standard library only."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sys
import urllib.parse
from typing import IO, Any, Dict, Iterator, List, Optional, Union, cast

from . import types as T
from .errors import AgentnetError, InvalidArgument, NotRunning, StreamBroken, error_for

__all__ = ["Client", "JSONLines", "Tunnel", "StreamSocket", "default_socket", "UPGRADE_PROTOCOL", "FRAMING_HEADER"]

UPGRADE_PROTOCOL = "agentnet-stream"
_HOST = "agentnet"  # the Host header; the daemon ignores it
_MAX_ERROR_BODY = 64 << 10
_MAX_HEADER = 64 << 10


def _user_config_dir() -> str:
    # Go's os.UserConfigDir, which the daemon uses.
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Application Support")
    if os.name == "nt":
        return os.environ.get("AppData", "")
    return os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")


def default_state_dir() -> str:
    """The state directory the CLI uses: $AGENTNET_STATE, else
    $AGENTNET_HOME/node, else <user config dir>/agentnet/node."""
    if os.environ.get("AGENTNET_STATE"):
        return os.environ["AGENTNET_STATE"]
    home = os.environ.get("AGENTNET_HOME") or os.path.join(_user_config_dir(), "agentnet")
    return os.path.join(home, "node")


def default_socket(state: Optional[str] = None) -> str:
    """The control socket as the CLI finds it: $AGENTNET_SOCKET, else the
    "socket" key of <state>/config.json, else <state>/agentnet.sock."""
    if os.environ.get("AGENTNET_SOCKET"):
        return os.environ["AGENTNET_SOCKET"]
    state = state or default_state_dir()
    try:
        with open(os.path.join(state, "config.json"), encoding="utf-8") as f:
            s = json.load(f).get("socket")
            if isinstance(s, str) and s:
                return s
    except (OSError, ValueError, AttributeError):
        pass
    return os.path.join(state, "agentnet.sock")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]):
        super().__init__(_HOST, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _dial(self._path, self.timeout)


def _dial(path: str, timeout: Optional[float]) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise NotRunning(
            f"no agentnet daemon answers on {path}: {e.strerror or e}",
            'start it with "agentnet up" (add --detach to run it in the background), '
            "or point socket= / AGENTNET_SOCKET at its socket",
        ) from None
    return s


def _raise_for(status: int, body: bytes) -> None:
    try:
        e = json.loads(body)["error"]
        code = e["code"]
    except (ValueError, KeyError, TypeError):
        raise AgentnetError(f"daemon answered {status}: {body[:200]!r}", status=status) from None
    raise error_for(code, e.get("message", ""), e.get("hint", ""), status, e.get("peer_text", ""))


def _payload(item: Dict[str, Any], text_key: str, b64_key: str) -> bytes:
    if item.get(b64_key):
        return base64.b64decode(item[b64_key])
    return item.get(text_key, "").encode("utf-8")


class JSONLines:
    """A streaming answer (JSON Lines): iterate it for one dict per line.
    The iteration ends when the daemon ends the stream normally; an error
    line raises its exception, and a broken connection raises
    :class:`StreamBroken` (never a silent end). close() ends the request,
    and with it what the daemon set up for it. Use it as a context
    manager."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn = conn
        self._resp = resp
        self._closed = False

    def __iter__(self) -> "JSONLines":
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._closed:
            raise StopIteration
        while True:
            try:
                line = self._resp.readline(_MAX_HEADER * 16)
            except (http.client.IncompleteRead, OSError, ValueError) as e:
                if self._closed:
                    raise StopIteration from None
                self.close()
                raise StreamBroken(f"the stream broke: {e}") from None
            if not line:
                self.close()
                raise StopIteration
            if not line.endswith(b"\n"):
                self.close()
                raise StreamBroken("the stream ended in the middle of a line")
            line = line.strip()
            if line:
                break
        obj = json.loads(line)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("code"):
            self.close()
            raise error_for(err["code"], err.get("message", ""), err.get("hint", ""), 200, err.get("peer_text", ""))
        return cast(Dict[str, Any], obj)

    def next(self) -> Dict[str, Any]:
        """The next line (StopIteration at the end)."""
        return self.__next__()

    def close(self) -> None:
        """End the stream; the daemon tears down what it set up for it."""
        if self._closed:
            return
        self._closed = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._resp.close()
        except (OSError, ValueError):
            pass
        self._conn.close()

    def __enter__(self) -> "JSONLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Tunnel(JSONLines):
    """A live expose or forward: ``info`` is its first line (what the daemon
    set up); it lasts until close(). wait() blocks until the daemon ends it,
    raising the error that ended it, if any."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        super().__init__(conn, resp)
        try:
            self.info: Dict[str, Any] = self.__next__()
        except StopIteration:
            raise StreamBroken("the daemon ended the tunnel before it was set up") from None

    def wait(self) -> None:
        for _ in self:
            pass


FRAMING_HEADER = "Agentnet-Framing"
_F_DATA, _F_EOF, _F_RESET, _F_DONE = 1, 2, 3, 4
_MAX_FRAME = 65535


class StreamSocket:
    """A byte stream to a peer's virtual port, bridged by the daemon (the
    /v1/connect upgrade). It behaves like a connected socket: recv, read,
    sendall, shutdown_write() (the peer reads EOF; reading goes on),
    settimeout, fileno, close (a clean end), abort (a cut), and a context
    manager.

    With a daemon that frames the stream (``framed`` is True: it answered
    the Agentnet-Framing header), the end is explicit both ways: recv
    returns b"" only when the peer ended its side cleanly, and a cut stream
    raises :class:`StreamReset` (or the error that cut it, e.g. NotTrusted
    after a revocation); the daemon going away raises :class:`StreamBroken`.
    wait() returns once both sides ended cleanly. With an older daemon the
    socket carries raw bytes, and a cut cannot be told from the end."""

    def __init__(self, sock: socket.socket, buffered: bytes, framed: bool = False):
        self._sock = sock
        self._buf = bytearray(buffered)
        self.framed = framed
        self._pending = b""
        self._eof = False  # the peer's EOF arrived
        self._done = False  # the daemon's DONE arrived
        self._err: Optional[AgentnetError] = None
        self._wclosed = False

    # --- framed reading ---

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            b = self._sock.recv(max(65536, n - len(self._buf)))
            if not b:
                return False
            self._buf += b
        return True

    def _frame(self) -> "tuple[int, bytes]":
        if not self._fill(3):
            raise StreamBroken("the daemon closed the stream before its end; what arrived may be incomplete",
                               "is the daemon still running? (agentnet status)")
        t, n = self._buf[0], int.from_bytes(self._buf[1:3], "big")
        bad = (t not in (_F_DATA, _F_EOF, _F_RESET, _F_DONE) or (t == _F_DATA and n == 0)
               or (t in (_F_EOF, _F_DONE) and n != 0) or (t == _F_RESET and n > 4096))
        if bad:
            raise StreamReset("the daemon sent a malformed frame (type %d, length %d)" % (t, n))
        if not self._fill(3 + n):
            raise StreamBroken("the daemon closed the stream in the middle of a frame; what arrived may be incomplete")
        p = bytes(self._buf[3:3 + n])
        del self._buf[:3 + n]
        if t == _F_RESET:
            try:
                e = json.loads(p)
                raise error_for(e["code"], e.get("message", ""), e.get("hint", ""), 0, e.get("peer_text", ""))
            except (ValueError, KeyError, TypeError):
                raise StreamReset("the stream was reset") from None
        return t, p

    def _next_data(self) -> None:
        while not self._pending and not self._eof:
            if self._err is not None:
                raise self._err
            try:
                t, p = self._frame()
            except AgentnetError as e:
                self._err = e
                raise
            if t == _F_DATA:
                self._pending = p
            elif t == _F_EOF:
                self._eof = True
            else:
                self._err = StreamReset("unexpected frame %d before the peer's end" % t)
                raise self._err

    def recv(self, bufsize: int) -> bytes:
        """Up to bufsize bytes; b"" at the peer's (clean) EOF."""
        if not self.framed:
            if self._buf:
                b = bytes(self._buf[:bufsize])
                del self._buf[:bufsize]
                return b
            return self._sock.recv(bufsize)
        if self._err is not None:
            raise self._err
        self._next_data()
        b, self._pending = self._pending[:bufsize], self._pending[bufsize:]
        return b

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        b = self.recv(nbytes or len(view))
        view[: len(b)] = b
        return len(b)

    def read(self, n: int = -1) -> bytes:
        """Read n bytes (fewer only at EOF), or with n < 0 everything until
        the peer's EOF."""
        chunks: List[bytes] = []
        got = 0
        while n < 0 or got < n:
            b = self.recv(65536 if n < 0 else min(65536, n - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    # --- writing ---

    def sendall(self, data: bytes) -> None:
        if not self.framed:
            self._sock.sendall(data)
            return
        if self._wclosed:
            raise OSError("the stream's write side is closed")
        mv = memoryview(data)
        for i in range(0, len(mv), _MAX_FRAME):
            chunk = mv[i:i + _MAX_FRAME]
            self._sock.sendall(bytes([_F_DATA]) + len(chunk).to_bytes(2, "big") + chunk)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def _send_end(self, t: int) -> None:
        if self._wclosed:
            return
        self._wclosed = True
        self._sock.sendall(bytes([t, 0, 0]))

    def shutdown_write(self) -> None:
        """Send EOF to the peer; reading goes on."""
        if self.framed:
            self._send_end(_F_EOF)
        else:
            self._sock.shutdown(socket.SHUT_WR)

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.shutdown_write()

    def wait(self) -> None:
        """Framed: return once both sides ended cleanly (our EOF delivered
        and the peer's read), discarding unread data; raise what cut it
        otherwise. Raw: returns at once."""
        if not self.framed or self._done:
            return
        self._pending = b""
        while True:
            if self._err is not None:
                raise self._err
            try:
                t, _ = self._frame()
            except AgentnetError as e:
                self._err = e
                raise
            if t == _F_EOF and not self._eof:
                self._eof = True
            elif t == _F_DONE and self._eof:
                self._done = True
                return
            elif t != _F_DATA or self._eof:
                self._err = StreamReset("unexpected frame %d" % t)

    def abort(self) -> None:
        """Cut the stream: the peer sees a reset, never a clean end."""
        try:
            if self.framed:
                self._send_end(_F_RESET)
            else:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self._sock.close()

    def settimeout(self, t: Optional[float]) -> None:
        self._sock.settimeout(t)

    def gettimeout(self) -> Optional[float]:
        return self._sock.gettimeout()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """End our side cleanly (if not done yet) and close the socket."""
        if self.framed:
            try:
                self._send_end(_F_EOF)
            except OSError:
                pass
        self._sock.close()

    def __enter__(self) -> "StreamSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Client:
    """A client of one daemon's control API. ``socket`` is the control
    socket's path; by default it is found as the CLI finds it (``state``,
    $AGENTNET_SOCKET, $AGENTNET_STATE, $AGENTNET_HOME). ``timeout`` bounds
    each request that is not a stream, in seconds. Every method makes one
    request on its own connection, so a Client may be shared by threads.
    Failures raise :class:`agentnet.AgentnetError` subclasses."""

    def __init__(self, socket: Optional[str] = None, *, state: Optional[str] = None, timeout: Optional[float] = 60.0):
        self.socket = socket or default_socket(state)
        self.timeout = timeout

    # --- plumbing ---

    def _open(self, method: str, path: str, body: Optional[Any] = None, *,
              raw: Optional[Union[bytes, IO[bytes]]] = None, length: Optional[int] = None,
              timeout: Optional[float] = None, stream: bool = False) -> "tuple[http.client.HTTPConnection, http.client.HTTPResponse]":
        conn = _UnixHTTPConnection(self.socket, None if stream else (timeout or self.timeout))
        headers = {}
        data: Any = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
            if length is not None:
                headers["Content-Length"] = str(length)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except AgentnetError:
            conn.close()
            raise
        except socket.timeout:
            conn.close()
            raise error_for("timeout", f"the daemon did not answer {method} {path} in time", "raise timeout") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise error_for("unavailable", f"control socket: {e}", "check that the daemon is still running (agentnet status)") from None
        if resp.status >= 300:
            try:
                _raise_for(resp.status, resp.read(_MAX_ERROR_BODY))
            finally:
                conn.close()
        return conn, resp

    def _call(self, method: str, path: str, body: Optional[Any] = None, **kw: Any) -> Any:
        conn, resp = self._open(method, path, body, **kw)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise StreamBroken(f"reading the answer of {path}: {e}") from None
        finally:
            conn.close()
        try:
            return json.loads(data)
        except ValueError:
            raise AgentnetError(f"the daemon's answer to {path} is not JSON: {data[:200]!r}") from None

    def _stream(self, path: str, body: Any) -> JSONLines:
        conn, resp = self._open("POST", path, body, stream=True)
        return JSONLines(conn, resp)

    @staticmethod
    def _opt(**kw: Any) -> Dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    # --- node ---

    def status(self) -> T.Status:
        """GET /v1/status: this node."""
        return cast(T.Status, self._call("GET", "/v1/status"))

    def peers(self) -> T.PeerList:
        """GET /v1/peers: live peer connections."""
        return cast(T.PeerList, self._call("GET", "/v1/peers"))

    def set_hostname(self, hostname: str) -> T.HostnameResult:
        """PUT /v1/hostname."""
        return cast(T.HostnameResult, self._call("PUT", "/v1/hostname", {"hostname": hostname}))

    def clear_hostname(self) -> T.HostnameResult:
        """DELETE /v1/hostname."""
        return cast(T.HostnameResult, self._call("DELETE", "/v1/hostname"))

    def shutdown(self) -> T.ShutdownResult:
        """POST /v1/shutdown: the daemon answers, then shuts down."""
        return cast(T.ShutdownResult, self._call("POST", "/v1/shutdown"))

    # --- trust ---

    def trust_list(self) -> T.TrustList:
        """GET /v1/trust: every trust record."""
        return cast(T.TrustList, self._call("GET", "/v1/trust"))

    def trust_pending(self) -> T.TrustList:
        """GET /v1/trust/pending: requests waiting for our decision."""
        return cast(T.TrustList, self._call("GET", "/v1/trust/pending"))

    def trust_request(self, peer: str, note: Optional[str] = None) -> T.TrustResult:
        """POST /v1/trust/request (by address or hostname)."""
        return cast(T.TrustResult, self._call("POST", "/v1/trust/request", self._opt(peer=peer, note=note)))

    def trust_approve(self, peer: str) -> T.TrustResult:
        """POST /v1/trust/approve."""
        return cast(T.TrustResult, self._call("POST", "/v1/trust/approve", {"peer": peer}))

    def trust_reject(self, peer: str) -> T.TrustResult:
        """POST /v1/trust/reject."""
        return cast(T.TrustResult, self._call("POST", "/v1/trust/reject", {"peer": peer}))

    def trust_revoke(self, peer: str) -> T.TrustResult:
        """POST /v1/trust/revoke: live connections to the peer close at once."""
        return cast(T.TrustResult, self._call("POST", "/v1/trust/revoke", {"peer": peer}))

    def trust_forget(self, peer: str) -> T.ForgetResult:
        """POST /v1/trust/forget: delete the record of a peer that is not
        trusted, and our unanswered requests to that name (conflict if the
        peer is trusted: revoke first)."""
        return cast(T.ForgetResult, self._call("POST", "/v1/trust/forget", {"peer": peer}))

    # --- data ---

    def ping(self, peer: str, count: Optional[int] = None, interval_ms: Optional[int] = None,
             timeout_ms: Optional[int] = None) -> T.PingResult:
        """POST /v1/ping: round trips to the peer's echo service."""
        return cast(T.PingResult, self._call("POST", "/v1/ping", self._opt(peer=peer, count=count, interval_ms=interval_ms, timeout_ms=timeout_ms)))

    def send(self, peer: str, port: int, data: Union[bytes, str] = b"", timeout_ms: Optional[int] = None) -> T.SendResult:
        """POST /v1/send: one stream carrying data; the answer holds the
        peer's reply (``reply`` text or ``reply_base64``; the added key
        ``reply_bytes_data`` is the reply as bytes)."""
        body: Dict[str, Any] = self._opt(peer=peer, port=port, timeout_ms=timeout_ms)
        if isinstance(data, str):
            body["data"] = data
        elif data:
            body["data_base64"] = base64.b64encode(data).decode()
        res = self._call("POST", "/v1/send", body)
        res["reply_bytes_data"] = _payload(res, "reply", "reply_base64")
        return cast(T.SendResult, res)

    def recv(self, port: int, count: Optional[int] = None, max_bytes: Optional[int] = None,
             timeout_ms: Optional[int] = None) -> Iterator[T.Received]:
        """POST /v1/recv: listen on a virtual port; yields one dict per
        stream received (with ``payload``, the bytes). The listener is live
        when this returns; close the iterator (or exhaust count) to stop."""
        lines = self._stream("/v1/recv", self._opt(port=port, count=count, max_bytes=max_bytes, timeout_ms=timeout_ms))
        return _Received(lines)

    def connect(self, peer: str, port: int, timeout_ms: Optional[int] = None) -> StreamSocket:
        """POST /v1/connect with the protocol upgrade: a socket-like byte
        stream to peer:port."""
        body = json.dumps(self._opt(peer=peer, port=port, timeout_ms=timeout_ms)).encode()
        sock = _dial(self.socket, self.timeout)
        try:
            sock.sendall(
                b"POST /v1/connect HTTP/1.1\r\nHost: " + _HOST.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
                b"Connection: Upgrade\r\nUpgrade: " + UPGRADE_PROTOCOL.encode() + b"\r\n"
                + FRAMING_HEADER.encode() + b": 1\r\n\r\n" + body)
            buf = b""
            while b"\r\n\r\n" not in buf:
                if len(buf) > _MAX_HEADER:
                    raise AgentnetError("the daemon's answer to connect has an oversized header")
                b = sock.recv(65536)
                if not b:
                    raise StreamBroken("the daemon closed the connection before answering connect")
                buf += b
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status == 101:
                framed = any(h.partition(":")[0].strip().lower() == FRAMING_HEADER.lower() and h.partition(":")[2].strip() == "1"
                             for h in lines[1:])
                sock.settimeout(None)
                return StreamSocket(sock, rest, framed)
            length = 0
            for h in lines[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            length = min(length, _MAX_ERROR_BODY)
            while len(rest) < length:
                b = sock.recv(65536)
                if not b:
                    break
                rest += b
            _raise_for(status, rest)
            raise AgentnetError(f"connect: unexpected answer {status}")
        except socket.timeout:
            sock.close()
            raise error_for("timeout", "the daemon did not answer connect in time", "raise timeout") from None
        except BaseException:
            sock.close()
            raise

    def bench(self, peer: str, bytes: Optional[int] = None, pings: Optional[int] = None,
              timeout_ms: Optional[int] = None) -> T.BenchResult:
        """POST /v1/bench: throughput and RTT to the peer."""
        return cast(T.BenchResult, self._call("POST", "/v1/bench", self._opt(peer=peer, bytes=bytes, pings=pings, timeout_ms=timeout_ms), timeout=None))

    # --- tunnels ---

    def expose(self, port: int, to: str) -> Tunnel:
        """POST /v1/expose: serve the local TCP service ``to`` (host:port) on
        virtual port ``port`` until the Tunnel is closed."""
        conn, resp = self._open("POST", "/v1/expose", {"port": port, "to": to}, stream=True)
        return Tunnel(conn, resp)

    def forward(self, listen: str, peer: str, port: int) -> Tunnel:
        """POST /v1/forward: listen on the local TCP address ``listen`` and
        carry each connection to peer:port until the Tunnel is closed;
        ``info["listen"]`` is the actual address."""
        conn, resp = self._open("POST", "/v1/forward", {"listen": listen, "peer": peer, "port": port}, stream=True)
        return Tunnel(conn, resp)

    # --- inbox ---

    def message_send(self, peer: str, *, text: Optional[str] = None, json_value: Any = None,
                     data: Optional[bytes] = None, timeout_ms: Optional[int] = None) -> T.DeliveryResult:
        """POST /v1/messages: exactly one of text, json_value, data."""
        body: Dict[str, Any] = self._opt(peer=peer, text=text, timeout_ms=timeout_ms)
        if json_value is not None:
            body["json"] = json_value
        if data is not None:
            body["data_base64"] = base64.b64encode(data).decode()
        return cast(T.DeliveryResult, self._call("POST", "/v1/messages", body))

    def file_send(self, peer: str, file: Union[str, bytes, IO[bytes]], name: Optional[str] = None,
                  timeout_ms: Optional[int] = None) -> T.DeliveryResult:
        """POST /v1/files: a path, bytes, or a binary file object (seekable,
        for its size) to the peer's inbox under ``name``."""
        close = None
        if isinstance(file, str):
            name = name or os.path.basename(file)
            f: IO[bytes] = open(file, "rb")
            close = f
        elif isinstance(file, (bytes, bytearray)):
            import io
            f = io.BytesIO(bytes(file))
        else:
            f = file
        if not name:
            raise InvalidArgument("file_send: name missing", "give name=")
        try:
            start = f.tell()
            f.seek(0, os.SEEK_END)
            size = f.tell() - start
            f.seek(start)
            q = self._opt(peer=peer, name=name, timeout_ms=timeout_ms)
            return cast(T.DeliveryResult, self._call("POST", "/v1/files?" + urllib.parse.urlencode(q), raw=f, length=size, timeout=None))
        finally:
            if close is not None:
                close.close()

    def inbox(self) -> T.InboxList:
        """GET /v1/inbox: messages and files received."""
        return cast(T.InboxList, self._call("GET", "/v1/inbox"))

    def inbox_get(self, id: str) -> T.InboxEntry:
        """GET /v1/inbox/{id}: the item, with a message's content."""
        return cast(T.InboxEntry, self._call("GET", "/v1/inbox/" + urllib.parse.quote(id, safe="")))

    def inbox_data(self, id: str) -> bytes:
        """GET /v1/inbox/{id}/data: the raw content."""
        conn, resp = self._open("GET", "/v1/inbox/" + urllib.parse.quote(id, safe="") + "/data")
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise StreamBroken(f"reading inbox data: {e}") from None
        finally:
            conn.close()
        want = resp.getheader("Content-Length")
        if want is not None and int(want) != len(data):
            raise StreamBroken(f"inbox data: got {len(data)} of {want} bytes")
        return data

    def inbox_delete(self, id: str) -> T.InboxEntry:
        """DELETE /v1/inbox/{id}."""
        return cast(T.InboxEntry, self._call("DELETE", "/v1/inbox/" + urllib.parse.quote(id, safe="")))

    # --- events ---

    def publish(self, topic: str, data: Union[bytes, str] = b"", to: Optional[str] = None) -> T.PublishResult:
        """POST /v1/events/publish: on our bus, or with ``to`` a peer's."""
        body: Dict[str, Any] = self._opt(topic=topic, to=to)
        if isinstance(data, str):
            if data:
                body["data"] = data
        elif data:
            body["data_base64"] = base64.b64encode(data).decode()
        return cast(T.PublishResult, self._call("POST", "/v1/events/publish", body))

    def subscribe(self, patterns: List[str], from_: Optional[str] = None, count: Optional[int] = None) -> Iterator[T.Event]:
        """POST /v1/events/subscribe: yields events (with ``payload``, the
        data as bytes) from our bus, or with ``from_`` a peer's. The
        subscription is live when this returns."""
        lines = self._stream("/v1/events/subscribe", self._opt(patterns=patterns, count=count, **{"from": from_}))
        return _Received(lines, "data", "data_base64")

    # --- networks ---

    def networks(self) -> T.NetworkList:
        """GET /v1/networks."""
        return cast(T.NetworkList, self._call("GET", "/v1/networks"))

    def network_create(self, name: str) -> T.Network:
        """POST /v1/networks."""
        return cast(T.Network, self._call("POST", "/v1/networks", {"name": name}))

    def network_join(self, token: str) -> T.Network:
        """POST /v1/networks/join."""
        return cast(T.Network, self._call("POST", "/v1/networks/join", {"token": token}))

    def network_members(self, network: Union[str, int]) -> T.NetworkMembers:
        """GET /v1/networks/{network}."""
        return cast(T.NetworkMembers, self._call("GET", _netpath(network)))

    def network_invite(self, network: Union[str, int], invitee: Optional[str] = None,
                       ttl_s: Optional[int] = None) -> T.NetworkInvite:
        """POST /v1/networks/{network}/invite (no invitee: a bearer token)."""
        return cast(T.NetworkInvite, self._call("POST", _netpath(network, "invite"), self._opt(invitee=invitee, ttl_s=ttl_s)))

    def network_leave(self, network: Union[str, int]) -> T.Network:
        """POST /v1/networks/{network}/leave."""
        return cast(T.Network, self._call("POST", _netpath(network, "leave")))

    def network_remove(self, network: Union[str, int], member: str) -> T.NetworkMembers:
        """POST /v1/networks/{network}/remove."""
        return cast(T.NetworkMembers, self._call("POST", _netpath(network, "remove"), {"member": member}))


def _netpath(network: Union[str, int], action: str = "") -> str:
    p = "/v1/networks/" + urllib.parse.quote(str(network), safe="")
    return p + "/" + action if action else p


class _Received:
    """Iterates a JSON Lines stream, adding ``payload`` (bytes)."""

    def __init__(self, lines: JSONLines, text_key: str = "data", b64_key: str = "data_base64"):
        self._lines = lines
        self._keys = (text_key, b64_key)

    def __iter__(self) -> "_Received":
        return self

    def __next__(self) -> Any:
        item = next(self._lines)
        item["payload"] = _payload(item, *self._keys)
        return item

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> "_Received":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
