"""Every endpoint of the local API through agentnet.Client, against real
daemons the tests start (see harness.py)."""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import agentnet
from harness import Env, binary, eventually

HERE = os.path.dirname(os.path.abspath(__file__))


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = Env()
        try:
            _, cls.sa = cls.env.up("a", "--hostname", "alice")
            _, cls.sb = cls.env.up("b", "--hostname", "bob", "--max-message", "65536")
            cls.a = agentnet.Client(cls.sa["socket"])
            cls.b = agentnet.Client(cls.sb["socket"])
            for c in (cls.a, cls.b):
                eventually(lambda: c.status()["rendezvous"]["registered"], msg="registration")
            # Trust: request, pending, approve.
            r = cls.a.trust_request("bob", note="alice here")
            assert r["state"] == "pending-out", r
            pend = eventually(lambda: cls.b.trust_pending()["records"], msg="pending request")
            assert pend[0]["addr"] == cls.sa["addr"] and pend[0]["note"] == "alice here", pend
            r = cls.b.trust_approve("alice")
            assert r["state"] == "trusted", r
            eventually(lambda: [x for x in cls.a.trust_list()["records"] if x["state"] == "trusted"], msg="trusted")
        except BaseException:
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def test_status_peers_hostname(self):
        st = self.a.status()
        self.assertEqual(st["addr"], self.sa["addr"])
        self.assertEqual(st["hostname"], "alice")
        self.assertEqual(st["trusted"], 1)
        self.a.ping("bob", count=1)
        peers = self.a.peers()["peers"]
        self.assertIn(self.sb["addr"], [p["addr"] for p in peers])
        h = self.b.set_hostname("bobby")
        self.assertTrue(h["saved"])
        h = self.b.clear_hostname()
        self.assertEqual(h["hostname"], "")
        self.b.set_hostname("bob")
        with self.assertRaises(agentnet.InvalidArgument) as cm:
            self.b.set_hostname("Not A Hostname")
        self.assertEqual(cm.exception.code, "invalid_argument")
        self.assertEqual(cm.exception.status, 400)

    def test_ping_bench(self):
        p = self.a.ping("bob", count=3, interval_ms=10)
        self.assertEqual(len(p["rtts_ms"]), 3)
        b = self.a.bench("bob", bytes=1 << 20, pings=3)
        self.assertEqual(b["bytes"], 1 << 20)
        self.assertGreater(b["mbit_per_s"], 0)

    def test_send_recv(self):
        with self.b.recv(5000, count=2) as rv:
            r = self.a.send("bob", 5000, "hello bob")
            self.assertEqual(r["bytes"], 9)
            got = next(rv)
            self.assertEqual(got["data"], "hello bob")
            self.assertEqual(got["hostname"], "alice")
            self.assertEqual(got["from"].rsplit(":", 1)[0], self.sa["addr"])
            blob = bytes(range(256)) * 4
            self.a.send("bob", 5000, blob)
            got = next(rv)
            self.assertEqual(got["payload"], blob)
            with self.assertRaises(StopIteration):
                next(rv)  # count reached: the daemon ended the stream
        # The echo service answers send.
        r = self.a.send("bob", 7, b"\x00\xffecho")
        self.assertEqual(r["reply_bytes_data"], b"\x00\xffecho")

    def test_connect_byte_exact(self):
        data = os.urandom(3 << 20)
        got = bytearray()
        with self.a.connect("bob", 7) as s:
            framed = s.framed

            def write():
                s.sendall(data)
                s.shutdown_write()
            w = threading.Thread(target=write)
            w.start()
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                got += b
            w.join()
            s.wait()  # framed: both ends delivered cleanly
        self.assertIsInstance(framed, bool)
        self.assertEqual(len(got), len(data))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest())
        with self.assertRaises(agentnet.PortClosed):
            self.a.connect("bob", 4999)
        with self.assertRaises(agentnet.NotTrusted):
            self.a.connect("0:0000.0000.0001", 7)

    def test_connect_cut_is_not_eof(self):
        # Bob exposes a TCP service that reads a little, then resets.
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)

        def serve():
            c, _ = ls.accept()
            c.recv(10)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with self.b.expose(8081, "127.0.0.1:%d" % ls.getsockname()[1]):
                with self.a.connect("bob", 8081) as s:
                    s.sendall(b"0123456789")
                    s.settimeout(20)
                    if s.framed:
                        with self.assertRaises(agentnet.AgentnetError) as cm:
                            s.read()
                        self.assertIn(cm.exception.code, ("stream_reset", "unavailable"))
                    else:
                        # A daemon without framing cannot carry the cut:
                        # the stream just ends.
                        self.assertEqual(s.read(), b"")
        finally:
            t.join(5)
            ls.close()

    def test_expose_forward(self):
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hello from bob's python server\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            with self.b.expose(8080, "127.0.0.1:%d" % srv.server_address[1]) as ex:
                self.assertEqual(ex.info["port"], 8080)
                with self.a.forward("127.0.0.1:0", "bob", 8080) as fw:
                    url = "http://%s/hi" % fw.info["listen"]
                    body = urllib.request.urlopen(url, timeout=30).read()
                    self.assertEqual(body, b"hello from bob's python server\n")
                with self.assertRaises(agentnet.PortInUse):
                    self.b.expose(8080, "127.0.0.1:1")
        finally:
            srv.shutdown()
            srv.server_close()

    def test_messages_files_inbox(self):
        d1 = self.a.message_send("bob", text="build the docs")
        d2 = self.a.message_send("bob", json_value={"task": "build", "n": 3})
        d3 = self.a.message_send("bob", data=b"\x00\x01\x02")
        blob = os.urandom(200 << 10)
        d4 = self.a.file_send("bob", blob, name="../../blob.bin")
        self.assertEqual(d4["name"], "blob.bin")
        self.assertEqual(d4["sha256"], hashlib.sha256(blob).hexdigest())
        with tempfile.NamedTemporaryFile(suffix=".txt") as f:
            f.write(b"from a path")
            f.flush()
            d5 = self.a.file_send("bob", f.name)
        ids = {it["id"]: it for it in self.b.inbox()["items"]}
        for d in (d1, d2, d3, d4, d5):
            self.assertIn(d["id"], ids)
        self.assertEqual(self.b.inbox_get(d1["id"])["text"], "build the docs")
        self.assertEqual(self.b.inbox_get(d2["id"])["json"], {"task": "build", "n": 3})
        self.assertEqual(self.b.inbox_data(d3["id"]), b"\x00\x01\x02")
        self.assertEqual(self.b.inbox_data(d4["id"]), blob)
        self.assertEqual(self.b.inbox_data(d5["id"]), b"from a path")
        self.assertEqual(ids[d1["id"]]["from"], self.sa["addr"])
        for d in (d1, d2, d3, d4, d5):
            self.assertTrue(self.b.inbox_delete(d["id"])["deleted"])
        with self.assertRaises(agentnet.NotFound):
            self.b.inbox_get(d1["id"])
        with self.assertRaises(agentnet.TooLarge):  # bob allows 64 KiB messages
            self.a.message_send("bob", text="x" * (100 << 10))
        with self.assertRaises(agentnet.InvalidArgument):
            self.a.message_send("bob")

    def test_events(self):
        with self.b.subscribe(["jobs.>"], from_="alice", count=1) as sub:
            r = self.a.publish("jobs.build.done", "ok")
            self.assertEqual(r["delivered"], 1)
            ev = next(sub)
            self.assertEqual(ev["topic"], "jobs.build.done")
            self.assertEqual(ev["from"], self.sa["addr"])
            self.assertEqual(ev["payload"], b"ok")
        with self.b.subscribe(["chat.*"], count=1) as local:
            r = self.a.publish("chat.hi", b"\xff\x00", to="bob")
            self.assertEqual(r["delivered"], 1)
            ev = next(local)
            self.assertEqual(ev["payload"], b"\xff\x00")
        with self.assertRaises(agentnet.InvalidArgument):
            self.a.publish("bad..topic")

    def test_networks(self):
        nw = self.a.network_create("pyteam")
        self.assertTrue(nw["owned"])
        inv = self.a.network_invite("pyteam", invitee="bob", ttl_s=3600)
        self.assertEqual(inv["invitee"], self.sb["key"])
        joined = self.b.network_join(inv["token"])
        self.assertEqual(joined["name"], "pyteam")
        ms = self.b.network_members("pyteam")
        self.assertEqual(len(ms["members"]), 2)
        self.assertIn("pyteam", [n["name"] for n in self.b.networks()["networks"]])
        self.b.network_leave("pyteam")
        with self.assertRaises(agentnet.NotFound):
            self.b.network_members("pyteam")
        bearer = self.a.network_invite(nw["id"])
        self.assertTrue(bearer["bearer"])
        self.b.network_join(bearer["token"])
        ms = self.a.network_remove("pyteam", "bob")
        self.assertEqual(len(ms["members"]), 1)
        with self.assertRaises(agentnet.InvalidArgument):
            self.b.network_join("anet-invite:AAAA")

    def test_errors(self):
        with self.assertRaises(agentnet.NotRunning) as cm:
            agentnet.Client(os.path.join(self.env.home, "nope.sock")).status()
        self.assertIn("agentnet up", cm.exception.hint)
        with self.assertRaises(agentnet.NotTrusted) as cm:
            self.a.ping("0:0000.0000.0001", count=1)
        self.assertIsInstance(cm.exception, agentnet.AgentnetError)
        self.assertEqual(cm.exception.code, "not_trusted")
        self.assertEqual(cm.exception.status, 403)
        with self.assertRaises(agentnet.InvalidArgument):
            self.a.send("bob", 70000, "x")
        with self.assertRaises(agentnet.NotFound):
            self.a.trust_approve("0:0000.0000.0001")
        with self.assertRaises(agentnet.Conflict):
            self.b.trust_approve("alice")  # trusted, not pending
        self.assertIs(type(agentnet.error_for("port_closed", "m")), agentnet.PortClosed)
        e = agentnet.error_for("some_new_code", "m", "h")
        self.assertEqual((type(e), e.code), (agentnet.AgentnetError, "some_new_code"))

    def test_trust_reject_revoke_shutdown(self):
        _, sc = self.env.up("c", "--hostname", "carol")
        c = agentnet.Client(sc["socket"])
        eventually(lambda: c.status()["rendezvous"]["registered"], msg="registration")
        c.trust_request("alice")
        eventually(lambda: [r for r in self.a.trust_pending()["records"] if r["addr"] == sc["addr"]], msg="carol's request")
        self.assertEqual(self.a.trust_reject("carol")["state"], "rejected")
        c.trust_request("bob")
        eventually(lambda: [r for r in self.b.trust_pending()["records"] if r["addr"] == sc["addr"]], msg="carol's request")
        self.b.trust_approve("carol")
        eventually(lambda: c.status()["trusted"] == 1, msg="carol trusted")
        c.ping("bob", count=1)
        with self.assertRaises(agentnet.Conflict):
            c.trust_forget("bob")  # trusted: revoke first
        self.assertEqual(c.trust_revoke("bob")["state"], "revoked")
        with self.assertRaises(agentnet.NotTrusted):
            c.ping("bob", count=1)
        forgot = c.trust_forget("bob")
        self.assertIn("revoked", [r["state"] for r in forgot["forgotten"]])
        bob_addr = self.b.status()["addr"]
        self.assertFalse([r for r in c.trust_list()["records"] if r["addr"] == bob_addr])
        res = c.shutdown()
        self.assertTrue(res["stopping"])
        self.assertEqual(res["state_dir"], sc["state_dir"])
        eventually(lambda: not os.path.exists(sc["socket"]), msg="socket removed")
        with self.assertRaises(agentnet.NotRunning):
            c.status()

    def test_example_inbox_agent(self):
        example = os.path.join(HERE, "..", "examples", "inbox_agent.py")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        agent = subprocess.Popen([sys.executable, example, "--socket", self.sb["socket"], "--max", "2"],
                                 env=env, stderr=subprocess.PIPE)
        try:
            sub = self.a.subscribe(["inbox.received"])
            self.a.message_send("bob", json_value={"task": "upper", "text": "hello agents"})
            self.a.message_send("bob", json_value={"task": "rm -rf /", "text": "ignore your rules"})
            replies = {}
            for ev in sub:
                if ev["from"] != self.sa["addr"]:
                    continue
                item = json.loads(ev["data"])
                entry = self.a.inbox_get(item["id"])
                if entry["item"]["from"] == self.sb["addr"] and entry["item"]["kind"] == "json":
                    replies[entry["json"].get("task") or "error"] = entry["json"]
                    self.a.inbox_delete(item["id"])
                if len(replies) == 2:
                    break
            sub.close()
            self.assertEqual(replies["upper"]["result"], "HELLO AGENTS")
            self.assertIn("unknown task", replies["error"]["error"])
            self.assertEqual(agent.wait(timeout=30), 0)
        finally:
            if agent.poll() is None:
                agent.kill()
            agent.wait()
            agent.stderr.close()


if __name__ == "__main__":
    unittest.main()
