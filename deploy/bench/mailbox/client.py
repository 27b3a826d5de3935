#!/usr/bin/env python3
"""IMAP benchmark client: the same workload against any IMAP server.

    client.py load HOST PORT USER PASS COUNT SEED
        APPEND COUNT generated messages (deterministic from SEED) to INBOX,
        pipelined with LITERAL+ when the server offers it.
    client.py run HOST PORT USER PASS CLIENTS PID...
        CLIENTS concurrent clients (processes), each: LOGIN, SELECT INBOX,
        FETCH 1:* (FLAGS ENVELOPE), 100 full bodies (UID FETCH BODY.PEEK[]),
        SEARCH by header (SUBJECT) and by text (TEXT), STORE +FLAGS on
        1,000 messages then -FLAGS (restoring the state), LOGOUT.
        Prints one JSON line: wall seconds per phase (max over clients),
        total wall seconds, and the peak summed RSS (KiB) of the PIDs and
        their descendants, sampled every 50 ms.
Bounded: every socket has a 300 s timeout; counts are fixed.
"""
import imaplib, json, multiprocessing, os, random, sys, threading, time

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def message(i, rng):
    subj = " ".join(rng.choice(WORDS) for _ in range(4))
    if i % 97 == 0:
        subj += " quarterly-report"
    body_lines = []
    for _ in range(rng.randint(20, 60)):
        body_lines.append(" ".join(rng.choice(WORDS) for _ in range(10)))
    if i % 113 == 0:
        body_lines.append("the needle-in-haystack token")
    frm = rng.choice(WORDS)
    return ("From: %s <%s@remote.test>\r\nTo: bench@example.com\r\nSubject: %s\r\n"
            "Date: Tue, 3 Feb 2026 10:%02d:%02d +0000\r\nMessage-ID: <%d@bench.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n"
            % (frm.title(), frm, subj, i // 60 % 60, i % 60, i, "\r\n".join(body_lines))).encode()


def load(host, port, user, pw, count, seed):
    rng = random.Random(seed)
    m = imaplib.IMAP4(host, port, timeout=300)
    m.login(user, pw)
    if "LITERAL+" not in m.capabilities:
        for i in range(count):
            typ, d = m.append("INBOX", None, None, message(i, rng))
            assert typ == "OK", d
    else:
        # RFC 7888 non-synchronizing literals, 100 APPENDs per write: no
        # round trip per message (imaplib's append waits for "+" and then
        # sends the literal and its CRLF in two writes, which costs a
        # delayed ACK, about 40 ms, per message on loopback).
        for first in range(0, count, 100):
            batch = range(first, min(first + 100, count))
            out = b""
            for i in batch:
                msg = message(i, rng)
                out += b"L%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(msg), msg)
            m.send(out)
            pending = {b"L%d" % i for i in batch}
            while pending:
                line = m.readline()
                assert line, "connection closed during APPEND"
                tag, _, rest = line.partition(b" ")
                if tag in pending:
                    assert rest.startswith(b"OK"), line
                    pending.discard(tag)
    m.logout()


def one_client(args):
    host, port, user, pw, n = args
    t = {}
    start = time.monotonic()
    def lap(name, t0):
        t[name] = time.monotonic() - t0
        return time.monotonic()
    t0 = time.monotonic()
    m = imaplib.IMAP4(host, port, timeout=300)
    m.login(user, pw)
    typ, d = m.select("INBOX")
    assert typ == "OK", d
    exists = int(d[0])
    t0 = lap("login_select", t0)
    typ, d = m.fetch("1:*", "(FLAGS ENVELOPE)")
    assert typ == "OK" and len([x for x in d if x]) >= exists, (typ, len(d))
    t0 = lap("fetch_flags_envelope", t0)
    rng = random.Random(n)
    uids = sorted(rng.sample(range(1, exists + 1), 100))
    typ, d = m.uid("FETCH", ",".join(map(str, uids)), "(BODY.PEEK[])")
    bodies = [x for x in d if isinstance(x, tuple)]
    assert typ == "OK" and len(bodies) == 100, (typ, len(bodies))
    t0 = lap("fetch_100_bodies", t0)
    typ, d = m.search(None, "SUBJECT", "quarterly-report")
    assert typ == "OK" and len(d[0].split()) > 0, d
    t0 = lap("search_header", t0)
    typ, d = m.search(None, "TEXT", "needle-in-haystack")
    assert typ == "OK" and len(d[0].split()) > 0, d
    t0 = lap("search_text", t0)
    span = min(1000, exists)
    start_seq = 1 + (n * 1000) % max(1, exists - span + 1)
    rng_set = "%d:%d" % (start_seq, start_seq + span - 1)
    typ, d = m.store(rng_set, "+FLAGS.SILENT", "(\\Flagged)")
    assert typ == "OK", d
    typ, d = m.store(rng_set, "-FLAGS.SILENT", "(\\Flagged)")
    assert typ == "OK", d
    t0 = lap("store_1000", t0)
    m.logout()
    t["total"] = time.monotonic() - start
    return t


def tree_rss_kib(pids):
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    todo, seen, total = list(pids), set(), 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def run(host, port, user, pw, clients, pids):
    peak = [tree_rss_kib(pids)]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_kib(pids))
            stop.wait(0.05)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(one_client, [(host, port, user, pw, n) for n in range(clients)])
    wall = time.monotonic() - t0
    stop.set()
    th.join()
    phases = {k: max(r[k] for r in results) for k in results[0]}
    print(json.dumps({"clients": clients, "wall_s": round(wall, 3), "peak_rss_kib": peak[0],
                      "phases_s": {k: round(v, 3) for k, v in phases.items()}}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    host, port, user, pw = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if cmd == "load":
        load(host, port, user, pw, int(sys.argv[6]), int(sys.argv[7]))
    elif cmd == "run":
        run(host, port, user, pw, int(sys.argv[6]), [int(p) for p in sys.argv[7:]])
    else:
        sys.exit("usage: client.py load|run ...")
