"""Real daemons for the tests: the agentnet binary ($AGENTNET_BIN, else
built with "go build" from this repository), each daemon in its own state
directory under a private AGENTNET_HOME, sharing a zero-config rendezvous
on a free loopback port."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

_bin = None
_bin_lock = threading.Lock()


def binary():
    global _bin
    with _bin_lock:
        if _bin:
            return _bin
        env_bin = os.environ.get("AGENTNET_BIN")
        if env_bin:
            _bin = env_bin
            return _bin
        if not shutil.which("go"):
            raise RuntimeError("set AGENTNET_BIN to the agentnet binary (no go toolchain to build it)")
        out = os.path.join(tempfile.mkdtemp(prefix="agentnet-pytest-"), "agentnet")
        subprocess.run(["go", "build", "-o", out, "./cmd/agentnet"], cwd=REPO, check=True)
        _bin = out
        return _bin


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Env:
    """A private AGENTNET_HOME with its own zero-config rendezvous port."""

    def __init__(self):
        self.home = tempfile.mkdtemp(prefix="agentnet-py-")
        self.rendezvous = "127.0.0.1:%d" % free_udp_port()
        self.daemons = []

    def env(self, state):
        e = {k: v for k, v in os.environ.items() if not k.startswith("AGENTNET_")}
        e["AGENTNET_HOME"] = self.home
        e["AGENTNET_STATE"] = os.path.join(self.home, state)
        e["AGENTNET_LOCAL_RENDEZVOUS"] = self.rendezvous
        e["AGENTNET_LISTEN"] = "127.0.0.1:0"
        return e

    def up(self, state, *args):
        """Start a daemon in the foreground; return (process, status)."""
        p = subprocess.Popen([binary(), "up", "--json"] + list(args), env=self.env(state),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = p.stdout.readline()
        if not line:
            err = p.stderr.read().decode(errors="replace")
            raise RuntimeError("agentnet up %s failed: %s" % (state, err))
        st = json.loads(line)
        self.daemons.append(p)
        return p, st

    def cli(self, state, *args, check=True):
        """Run a CLI command with --json; return its decoded output."""
        r = subprocess.run([binary()] + list(args) + ["--json"], env=self.env(state),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError("agentnet %s: %s" % (" ".join(args), r.stderr.decode(errors="replace")))
        return json.loads(r.stdout) if r.stdout.strip() else None

    def close(self):
        for p in self.daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.daemons:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        shutil.rmtree(self.home, ignore_errors=True)


def eventually(cond, timeout=15.0, interval=0.02, msg="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + msg)
        time.sleep(interval)
