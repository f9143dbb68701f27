"""agentnet: a client of the agentnet daemon's local API.

    import agentnet
    c = agentnet.Client()                      # finds the socket as the CLI does
    print(c.status()["addr"])
    c.trust_request("bob", note="alice here")
    with c.connect("bob", 7) as s:             # a byte stream to bob's echo port
        s.sendall(b"hello"); s.shutdown_write(); print(s.read())
    for ev in c.subscribe(["inbox.>"]):        # JSON Lines as an iterator
        ...

Standard library only. Errors are exceptions named after the API's codes
(agentnet.NotTrusted, agentnet.NotRunning, ...), all AgentnetError.
"""

from .client import UPGRADE_PROTOCOL, Client, JSONLines, StreamSocket, Tunnel, default_socket, default_state_dir
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["Client", "JSONLines", "StreamSocket", "Tunnel", "default_socket", "default_state_dir", "UPGRADE_PROTOCOL"] + list(_errors_all)
