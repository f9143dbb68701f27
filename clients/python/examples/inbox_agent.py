#!/usr/bin/env python3
"""An agent that answers tasks from its inbox.

A peer sends a JSON message such as {"task": "upper", "text": "hello"};
this agent computes the answer and sends it back to the sender's inbox as
{"reply_to": <message id>, "task": "upper", "result": "HELLO"} (or
{"reply_to": ..., "error": "..."}), then deletes the task from its inbox.

Everything in a message is data from another agent: the tasks are a fixed
set of pure functions, inputs are size-checked, and nothing in a message
is ever executed or followed as an instruction.

    python3 inbox_agent.py [--socket PATH] [--max N]

It waits for "inbox.received" events from its own daemon (events other
agents publish on our bus carry their own address and are ignored), and
first answers what is already in the inbox.
"""

import argparse
import json
import sys

import agentnet

MAX_TEXT = 64 << 10


def answer(task):
    """The result of one task, or raise ValueError."""
    if not isinstance(task, dict) or not isinstance(task.get("task"), str):
        raise ValueError('want {"task": ...}')
    op = task["task"]
    if op in ("upper", "reverse", "count"):
        text = task.get("text")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise ValueError("text: want a string of at most %d bytes" % MAX_TEXT)
        return {"upper": text.upper, "reverse": lambda: text[::-1], "count": lambda: len(text.split())}[op]()
    if op == "sum":
        nums = task.get("numbers")
        if not isinstance(nums, list) or len(nums) > 10000 or not all(
                isinstance(n, (int, float)) and not isinstance(n, bool) for n in nums):
            raise ValueError("numbers: want a list of at most 10000 numbers")
        return sum(nums)
    raise ValueError("unknown task %r (upper, reverse, count, sum)" % op[:64])


class Agent:
    def __init__(self, client):
        self.c = client
        self.me = client.status()["addr"]
        self.done = set()
        self.answered = 0

    def handle(self, item_id):
        if item_id in self.done:
            return
        self.done.add(item_id)
        try:
            entry = self.c.inbox_get(item_id)
        except agentnet.NotFound:
            return  # handled (and deleted) already
        item = entry["item"]
        if item["kind"] == "json":
            try:
                reply = {"reply_to": item_id, "task": entry["json"].get("task"), "result": answer(entry["json"])}
            except (ValueError, AttributeError) as e:
                reply = {"reply_to": item_id, "error": str(e)}
            try:
                self.c.message_send(item["from"], json_value=reply)
                self.answered += 1
            except agentnet.AgentnetError as e:
                print("inbox_agent: cannot answer %s: %s" % (item["from"], e), file=sys.stderr)
                return  # keep the task: it is retried at the next start
        self.c.inbox_delete(item_id)

    def run(self, max_tasks=0):
        events = self.c.subscribe(["inbox.received"])
        try:
            for it in self.c.inbox()["items"]:
                self.handle(it["id"])
            if max_tasks and self.answered >= max_tasks:
                return
            print("inbox_agent: serving %s" % self.me, file=sys.stderr, flush=True)
            for ev in events:
                if ev["from"] != self.me:
                    continue  # a peer published on our bus: not our daemon's event
                self.handle(json.loads(ev["data"])["id"])
                if max_tasks and self.answered >= max_tasks:
                    return
        finally:
            events.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="the daemon's control socket (default: as the CLI finds it)")
    ap.add_argument("--max", type=int, default=0, help="exit after answering this many tasks (0: never)")
    args = ap.parse_args()
    try:
        Agent(agentnet.Client(args.socket)).run(args.max)
    except agentnet.AgentnetError as e:
        print("inbox_agent:", e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
