#!/usr/bin/env python3
"""Peers and probes for deploy/rehearse.sh, standard library only.

  tools.py ports N                 N free TCP ports on 127.0.0.1, one per line
  tools.py dns PORT                authoritative DNS on 127.0.0.1:PORT (UDP):
                                   every *.remote.test has MX 10 mx.sink.test,
                                   mx.sink.test has A 127.0.0.1 and no AAAA
  tools.py sink PORT LOG [DELAY]   SMTP sink (the remote MX): appends
                                   "<id> <rcpt>" to LOG per recipient of each
                                   message, DELAY seconds after DATA
  tools.py send PLAN HOST:PORT...  send every message in PLAN (JSON lines
                                   {"id","rcpts"}) round-robin over the ingress
                                   replicas, retrying 4xx and connection errors
                                   like an MTA; prints one line per accepted id
  tools.py imap-ids HOST:PORT USER PASS   the rehearsal ids in USER's INBOX
  tools.py wait-http URL SECONDS   wait until URL answers 200
  tools.py inject API KEY N PLAN   POST one batch of N recipients (ids b00000…,
                                   at batch.remote.test) to the injection API
                                   at API, append its plan lines to PLAN, then
                                   wait until its expansion has begun and is
                                   not finished; prints the batch id
  tools.py batch API KEY ID        the batch's record (state, spooled, total)
"""
import asyncio
import imaplib
import json
import re
import smtplib
import socket
import struct
import sys
import time
import urllib.request


def ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
        s.close()


# --- DNS -------------------------------------------------------------------

def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def parse_query(data):
    (qid, flags, qd) = struct.unpack("!HHH", data[:6])
    pos, labels = 12, []
    while data[pos]:
        n = data[pos]
        labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += n + 1
    qtype, qclass = struct.unpack("!HH", data[pos + 1:pos + 5])
    return qid, flags, ".".join(labels).lower(), qtype, data[12:pos + 5]


def rr(rtype, rdata, ttl=60, owner=b"\xc0\x0c"):
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


SOA = rr(6, encode_name("ns.test") + encode_name("hostmaster.test") + struct.pack("!IIIII", 1, 60, 60, 600, 60),
         owner=encode_name("test"))


def answer(data):
    qid, flags, name, qtype, question = parse_query(data)
    A, MX, AAAA = 1, 15, 28
    answers, rcode = [], 0
    if name == "mx.sink.test":
        if qtype == A:
            answers.append(rr(A, socket.inet_aton("127.0.0.1")))
    elif name.endswith(".remote.test"):
        if qtype == MX:
            answers.append(rr(MX, struct.pack("!H", 10) + encode_name("mx.sink.test")))
    else:
        rcode = 3  # NXDOMAIN
    auth = [] if answers else [SOA]
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(answers), len(auth), 0)
    return header + question + b"".join(answers) + b"".join(auth)


def dns(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(port)))
    while True:
        data, peer = s.recvfrom(4096)
        try:
            s.sendto(answer(data), peer)
        except Exception as e:  # a malformed query: ignore it
            print(f"dns: {e}", file=sys.stderr)


# --- SMTP sink ---------------------------------------------------------------

def sink(port, log, delay="0"):
    delay = float(delay)
    out = open(log, "a", buffering=1)

    async def session(reader, writer):
        async def reply(line):
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply("220 mx.sink.test ESMTP rehearsal sink")
        rcpts = []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.decode("latin-1").strip()
                verb = cmd[:4].upper()
                if verb in ("EHLO", "HELO"):
                    await reply("250 mx.sink.test")
                elif verb == "MAIL":
                    rcpts = []
                    await reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    m = re.search(r"<([^>]*)>", cmd)
                    rcpts.append(m.group(1) if m else "?")
                    await reply("250 2.1.5 ok")
                elif verb == "DATA":
                    await reply("354 go ahead")
                    body = b""
                    while True:
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        if chunk in (b".\r\n", b".\n"):
                            break
                        body += chunk
                    m = re.search(rb"^Subject: rehearsal (\S+)", body, re.M)
                    mid = m.group(1).decode() if m else "unknown"
                    if delay:
                        await asyncio.sleep(delay)
                    for r in rcpts:
                        out.write(f"{mid} {r}\n")
                    await reply("250 2.0.0 stored")
                elif verb == "RSET":
                    rcpts = []
                    await reply("250 2.0.0 ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    return
                else:
                    await reply("502 5.5.2 not implemented")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(session, "127.0.0.1", int(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- sender ------------------------------------------------------------------

def send(plan, *servers):
    servers = [(h, int(p)) for h, p in (s.rsplit(":", 1) for s in servers)]
    msgs = [json.loads(l) for l in open(plan) if l.strip()]
    conns = [None] * len(servers)
    for i, m in enumerate(msgs):
        body = (f"From: sender@origin.test\r\nTo: {', '.join(m['rcpts'])}\r\n"
                f"Subject: rehearsal {m['id']}\r\nMessage-ID: <{m['id']}@origin.test>\r\n\r\n"
                f"Rehearsal message {m['id']}.\r\n")
        deadline = time.monotonic() + 90
        k = i % len(servers)
        while True:
            try:
                if conns[k] is None:
                    conns[k] = smtplib.SMTP(*servers[k], timeout=15)
                    conns[k].ehlo("origin.test")
                refused = conns[k].sendmail("sender@origin.test", m["rcpts"], body)
                if refused:
                    raise smtplib.SMTPRecipientsRefused(refused)
                print(m["id"], flush=True)
                break
            except (smtplib.SMTPException, OSError) as e:
                try:
                    if conns[k] is not None:
                        conns[k].close()
                except Exception:
                    pass
                conns[k] = None
                code = getattr(e, "smtp_code", 0) or 0
                if 500 <= code < 600 or time.monotonic() > deadline:
                    print(f"send {m['id']}: gave up: {e}", file=sys.stderr, flush=True)
                    break
                print(f"send {m['id']} via {servers[k][1]}: {e!r}; retrying", file=sys.stderr, flush=True)
                k = (k + 1) % len(servers)
                time.sleep(0.5)
    for c in conns:
        if c is not None:
            try:
                c.quit()
            except Exception:
                pass


def imap_ids(server, user, password):
    host, port = server.rsplit(":", 1)
    im = imaplib.IMAP4(host, int(port))
    im.login(user, password)
    typ, data = im.select("INBOX", readonly=True)
    n = int(data[0])
    ids = set()
    if n:
        typ, data = im.fetch(f"1:{n}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for part in data:
            if isinstance(part, tuple):
                m = re.search(rb"Subject: rehearsal (\S+)", part[1])
                if m:
                    ids.add(m.group(1).decode())
    im.logout()
    for i in sorted(ids):
        print(i)


def wait_http(url, seconds):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} not ready within {seconds}s")


def api(url, key, body=None, idempotency=None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if idempotency:
        headers["Idempotency-Key"] = idempotency
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def inject(base, key, n, plan):
    ids = [f"b{i:05d}" for i in range(int(n))]
    body = {
        "from": "news@shop.example",
        "subject": "rehearsal {{ id }}",
        "text": "Rehearsal batch message {{ id }} for {{ name }}.\n",
        "campaign": "rehearsal",
        "recipients": [{"email": f"r{i}@batch.remote.test", "name": f"Reader {i}",
                        "vars": {"id": b}} for i, b in enumerate(ids)],
    }
    # An Idempotency-Key makes a retry after a lost answer safe.
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = api(f"{base}/v1/messages", key, body, idempotency="rehearsal-batch")
            break
        except OSError as e:
            if time.monotonic() > deadline:
                sys.exit(f"inject: {e}")
            time.sleep(0.5)
    if answer["accepted"] != len(ids):
        sys.exit(f"inject: accepted {answer['accepted']} of {len(ids)}: {answer}")
    with open(plan, "a") as f:
        for i, b in enumerate(ids):
            f.write(json.dumps({"id": b, "rcpts": [f"r{i}@batch.remote.test"]}) + "\n")
    batch_id = answer["batch_id"]
    # Poll fast: the kill must land while the batch is being expanded.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rec = api(f"{base}/v1/batches/{batch_id}", key)
        if rec["state"] == "spooled":
            sys.exit(f"inject: batch {batch_id} was spooled before its expansion was seen")
        if rec["spooled"] > 0:
            print(batch_id)
            return
        time.sleep(0.01)
    sys.exit(f"inject: batch {batch_id} did not start expanding within 60s")


def batch(base, key, batch_id):
    rec = api(f"{base}/v1/batches/{batch_id}", key)
    print(f"{rec['state']} {rec['spooled']} {rec['total']}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"ports": ports, "dns": dns, "sink": sink, "send": send, "imap-ids": imap_ids,
     "wait-http": wait_http, "inject": inject, "batch": batch}[cmd](*args)
