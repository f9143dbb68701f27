"""Typed shapes of the control API's answers (the JSON objects the daemon
sends), as TypedDicts: plain dicts at run time, checked by type checkers.
Field names and meanings are those of the README's "Local API" section and
of package ctl in the Go module."""

from __future__ import annotations

from typing import Any, List, TypedDict


class RendezvousStatus(TypedDict):
    addr: str
    key: str
    mode: str
    registered: bool
    error: str


class NATStatus(TypedDict):
    kind: str
    mapped: str
    checked: str


class ServiceStatus(TypedDict):
    name: str
    port: int
    enabled: bool


class NodeStats(TypedDict):
    datagrams_dropped: int
    bad_streams: int
    events_dropped: int
    inbox_bytes: int


class Status(TypedDict):
    version: str
    pid: int
    addr: str
    key: str
    hostname: str
    state_dir: str
    socket: str
    listen: str
    started: str
    rendezvous: RendezvousStatus
    nat: NATStatus
    services: List[ServiceStatus]
    peers: int
    trusted: int
    pending: int
    stats: NodeStats


class Peer(TypedDict):
    addr: str
    key: str
    hostname: str
    path: str
    standby: bool
    remote: str
    outgoing: bool
    found: str
    setup_ms: float
    since: str
    rtt_ms: float
    bytes_sent: int
    bytes_received: int


class PeerList(TypedDict):
    peers: List[Peer]


class HostnameResult(TypedDict):
    hostname: str
    saved: bool
    applied: bool
    restart_required: bool
    note: str


class TrustRecord(TypedDict):
    addr: str
    key: str
    target: str
    hostname: str
    state: str
    note: str
    created: str
    updated: str


class TrustList(TypedDict):
    records: List[TrustRecord]


class TrustResult(TypedDict):
    peer: str
    addr: str
    state: str
    delivered: bool
    warning: str


class ForgetResult(TypedDict):
    peer: str
    forgotten: List[TrustRecord]


class PingResult(TypedDict):
    peer: str
    addr: str
    connect_ms: float
    rtts_ms: List[float]
    min_ms: float
    avg_ms: float
    max_ms: float


class SendResult(TypedDict):
    peer: str
    addr: str
    port: int
    bytes: int
    reply: str
    reply_base64: str
    reply_bytes: int


class Received(TypedDict):
    """One stream received by recv. ``data`` is text if it was valid UTF-8,
    else ``data_base64``; :meth:`Client.recv` adds ``payload`` (bytes)."""
    # 'from' is a keyword; access it as item["from"].
    hostname: str
    port: int
    bytes: int
    data: str
    data_base64: str
    truncated: bool
    time: str


class BenchResult(TypedDict):
    peer: str
    addr: str
    service: str
    bytes: int
    seconds: float
    mbit_per_s: float
    rtt_min_ms: float
    rtt_avg_ms: float
    rtt_max_ms: float
    rtt_count: int
    connect_ms: float


class Exposed(TypedDict):
    addr: str
    port: int
    to: str


class Forwarded(TypedDict):
    listen: str
    peer: str
    addr: str
    port: int


class DeliveryResult(TypedDict):
    peer: str
    addr: str
    kind: str
    id: str
    name: str
    bytes: int
    sha256: str


class InboxItem(TypedDict):
    id: str
    kind: str
    # 'from' is a keyword; access it as item["from"].
    hostname: str
    name: str
    path: str
    bytes: int
    sha256: str
    received: str


class InboxList(TypedDict):
    items: List[InboxItem]
    bytes: int


class InboxEntry(TypedDict, total=False):
    item: InboxItem
    text: str
    json: Any
    data_base64: str
    deleted: bool


class PublishResult(TypedDict):
    topic: str
    to: str
    delivered: int


class Event(TypedDict):
    topic: str
    data: str
    data_base64: str
    seq: int
    time: str
    dropped: int


class Network(TypedDict):
    id: int
    name: str
    owner: str
    owner_addr: str
    addr: str
    owned: bool
    members: int


class NetworkList(TypedDict):
    networks: List[Network]


class NetworkMember(TypedDict):
    addr: str
    key: str
    hostname: str
    owner: bool
    self: bool
    joined: str


class NetworkMembers(TypedDict):
    network: Network
    members: List[NetworkMember]


class NetworkInvite(TypedDict):
    network: Network
    token: str
    invitee: str
    bearer: bool
    expires: str


class ShutdownResult(TypedDict):
    pid: int
    state_dir: str
    stopping: bool
