#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the interop vectors
(real records and frames made by Tool Db) plus hand-made frames of every
message type. Run from the repository root; the output is committed."""
import json, os

ROOT = "fuzz/corpus"
recs = json.load(open("tests/interop/vectors/records.json"))
peers = json.load(open("tests/interop/vectors/peers.json"))


def write(target, name, text):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w", encoding="utf-8") as f:
        f.write(text)


def slug(s):
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:40]


j = lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False)

# record: every vector's exact text (valid and invalid ones).
for i, v in enumerate(recs):
    write("record", f"{i:02}-{slug(v['name'])}", v["raw"])

# wire: the vectors' put/crdtPut frames, then one frame of every other type.
for i, v in enumerate(recs):
    if v.get("frame"):
        write("wire", f"{i:02}-{slug(v['name'])}", v["frame"])
p = peers[0]["peer"]
srv = [x["peer"] for x in peers[:3]]
other = {
    "ping": {"type": "ping", "id": "p1", "to": ["whoever"], "clientId": p["address"][-20:], "isServer": True, "peer": p, "ext": {"reconcile": 1}},
    "ping-client": {"type": "ping", "id": "p2", "to": [], "clientId": "whoever", "isServer": False, "peer": {"topic": "tool-db-default"}},
    "pong": {"type": "pong", "id": "q1", "to": ["x"], "clientId": p["address"][-20:], "isServer": True, "servers": srv, "ext": {"reconcile": 1}},
    "get": {"type": "get", "id": "g1", "to": [], "key": "greeting"},
    "subscribe": {"type": "subscribe", "id": "s1", "to": [], "key": ":Jd5CMUH0LRfoUKPkW_CVp_cU4mAdligkyZhasD-XLq4LxbGFzfj7FqPp2JinMZmilr9Iu7OSRnj1gTe40nAfVU.profile"},
    "query": {"type": "query", "id": "y1", "to": [], "key": "pre"},
    "queryAck": {"type": "queryAck", "id": "y1", "to": ["a", "b"], "keys": ["pre1", "pre2", "=="]},
    "crdtGet": {"type": "crdtGet", "id": "c1", "to": [], "key": "crdtmap"},
    "function": {"type": "function", "id": "f1", "to": [], "function": "echo", "args": [1, "two", {"three": [3.5e-7]}]},
    "functionReturn": {"type": "functionReturn", "id": "f1", "to": [], "code": "OK", "return": {"x": None}},
    "reconcile-ranges": {"type": "reconcile", "id": "r1", "to": [], "step": {"kind": "ranges", "ranges": [{"lo": None, "hi": "key020", "fp": "0" * 32, "n": 40}, {"lo": "key020", "hi": None, "fp": "f" * 32, "n": 3}]}},
    "reconcile-items": {"type": "reconcile", "id": "r2", "to": [], "step": {"kind": "items", "range": {"lo": "a", "hi": "z"}, "items": [["key001", "00" * 16], ["zz", "11" * 16]]}},
    "reconcile-need": {"type": "reconcile", "id": "r3", "to": [], "step": {"kind": "need", "keys": ["key001", "greeting"]}},
    "unknown": {"type": "gossip", "id": "e1"},
}
for name, m in other.items():
    write("wire", name, j(m))

# reconcile: a Step as carried in a reconcile frame's `step`.
for name, m in other.items():
    if name.startswith("reconcile-"):
        write("reconcile", name[len("reconcile-"):], j(m["step"]))
write("reconcile", "ranges-all", j({"kind": "ranges", "ranges": [{"lo": None, "hi": None, "fp": "1" * 32, "n": 100}]}))
write("reconcile", "ranges-empty", j({"kind": "ranges", "ranges": [{"lo": "b", "hi": "a", "fp": "0" * 32, "n": 0}]}))
write("reconcile", "items-all", j({"kind": "items", "range": {"lo": None, "hi": None}, "items": [[f"key{i:03}", f"{i:02x}" * 16] for i in range(0, 50, 3)]}))

# crdt: two records, stored then incoming, one per line.
mp = json.loads(next(v["raw"] for v in recs if v["name"].startswith("MAP")))
a = mp["a"]


def rec(k, t, h, v, c):
    return j({"k": k, "a": a, "n": 0, "t": t, "h": h, "s": "00", "v": v, "c": c})


newer = dict(mp, t=mp["t"] + 5, h="f" * 64, v=[{"t": "SET", "k": "c", "a": "B", "v": [1, 2], "i": 3}, mp["v"][0]])
write("crdt", "map-real-and-newer", j(mp) + "\n" + j(newer))
write("crdt", "map-newer-and-real", j(newer) + "\n" + j(mp))
write("crdt", "map-same", j(mp) + "\n" + j(mp))
lst = [{"t": "INS", "i": 1, "v": {"a": 1, "b": 2}}, {"t": "INS", "i": 2, "v": "x"}, {"t": "DEL", "i": 1}]
write("crdt", "list", rec("l", 10, "aa", lst[:2], "LIST") + "\n" + rec("l", 9, "ab", lst[1:], "LIST"))
cnt = [{"t": "ADD", "i": 0, "a": "A", "v": 5}, {"t": "SUB", "i": 1, "a": "B", "v": 2}]
write("crdt", "counter", rec("n", 10, "aa", cnt[:1], "COUNTER") + "\n" + rec("n", 10, "ab", cnt, "COUNTER"))
write("crdt", "kind-change", rec("x", 1, "aa", cnt, "COUNTER") + "\n" + rec("x", 2, "ab", lst, "LIST"))
write("crdt", "plain-then-map", recs[0]["raw"] + "\n" + j(newer))
