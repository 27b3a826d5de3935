#!/usr/bin/env python3
"""A small SMTP server for Tern's delivery tests, independent of Tern's own
SMTP code, using Python's standard library only (socket, ssl, threading).
TLS is OpenSSL through Python's ssl module, so STARTTLS is tested against
a different TLS stack than the rustls client.

Prints the bound port on stdout, then serves until killed. Every event is
appended as one JSON line to --log:
  {"event": "connect", "conn": n, "peer": ip}
  {"event": "close", "conn": n, "quit": bool}
  {"event": "message", "conn": n, "tls": version-or-null, "helo": ..,
   "ehlo_count": n, "mail_from": .., "mail_params": [..], "rcpts": [..],
   "pipelined": bool, "bdat": bool, "data_hex": ..}
--tls-broken answers STARTTLS with garbage, --tls-stall with silence (the
handshake times out). Recipients whose local part starts with "reject" get 550 5.1.1, "defer"
get 451 4.3.0. While the file given with --throttle-file exists, MAIL is
answered with its contents (a provider's throttling reply, CRLF lines) and
a 421 reply closes the connection; logged as {"event": "throttled"}.
"""
import argparse
import json
import os
import socket
import ssl
import threading
import time

lock = threading.Lock()
counter = [0]
active = [0, 0]  # current, max concurrent connections


def log(path, obj):
    with lock:
        with open(path, "a") as f:
            f.write(json.dumps(obj) + "\n")


class Conn:
    def __init__(self, sock, args, n):
        self.sock = sock
        self.args = args
        self.n = n
        self.buf = b""
        self.tls = None

    def send(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def fill(self, timeout=None):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(None)
        if not data:
            raise EOFError
        self.buf += data
        return True

    def line(self):
        while b"\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def ehlo_reply(self):
        a = self.args
        exts = []
        if a.size:
            exts.append("SIZE %d" % a.size)
        if not a.no_8bitmime:
            exts.append("8BITMIME")
        if not a.no_smtputf8:
            exts.append("SMTPUTF8")
        if a.pipelining:
            exts.append("PIPELINING")
        if a.chunking:
            exts.append("CHUNKING")
        if a.cert and self.tls is None:
            exts.append("STARTTLS")
        lines = ["peer.test hello"] + exts
        return "".join(
            "250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", l)
            for i, l in enumerate(lines)
        )

    def serve(self):
        a = self.args
        self.send("220 peer.test ESMTP\r\n")
        helo, ehlo_count = "", 0
        tx = None
        quit_seen = False
        while True:
            raw = self.line()
            text = raw.decode("utf-8", "replace")
            verb = text[:4].upper()
            if verb in ("EHLO", "HELO"):
                helo = text[5:].strip()
                ehlo_count += 1
                tx = None
                self.send(self.ehlo_reply() if verb == "EHLO" else "250 peer.test\r\n")
            elif text.upper() == "STARTTLS" and a.cert and self.tls is None:
                if self.buf:
                    self.send("501 5.5.1 nothing may follow STARTTLS\r\n")
                    continue
                self.send("220 2.0.0 ready to start TLS\r\n")
                if a.tls_stall:
                    # No server hello at all: the client's handshake times
                    # out. Wait (bounded) for it to give up and close.
                    self.sock.settimeout(60)
                    try:
                        while self.sock.recv(65536):
                            pass
                    except OSError:
                        pass
                    return False
                if a.tls_broken:
                    # Not a TLS server hello: the client's handshake fails.
                    self.send("this is not TLS\r\n" * 4)
                    time.sleep(0.5)
                    return False
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(a.cert, a.key)
                self.sock = ctx.wrap_socket(self.sock, server_side=True)
                self.tls = self.sock.version()
                tx = None
            elif verb == "MAIL" and a.throttle_file and os.path.exists(a.throttle_file):
                with open(a.throttle_file, "rb") as f:
                    reply = f.read()
                log(a.log, {"event": "throttled", "conn": self.n, "at": time.time()})
                self.send(reply)
                if reply.startswith(b"421"):
                    return False
            elif verb == "MAIL":
                parts = text[10:].split(">", 1)
                tx = {
                    "mail_from": parts[0].lstrip("<"),
                    "mail_params": parts[1].split() if len(parts) > 1 else [],
                    "rcpts": [],
                    "pipelined": False,
                }
                if a.pipelining:
                    # RFC 2920: a pipelining client sends RCPT before this
                    # reply. Wait a little for it to show it did.
                    deadline = time.time() + 0.5
                    while b"\n" not in self.buf and time.time() < deadline:
                        self.fill(0.05)
                    tx["pipelined"] = self.buf[:4].upper() == b"RCPT"
                self.send("250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                addr = text[8:].split(">", 1)[0].lstrip("<")
                local = addr.split("@")[0]
                if tx is None:
                    self.send("503 5.5.1 MAIL first\r\n")
                elif local.startswith("reject"):
                    self.send("550 5.1.1 no such user\r\n")
                elif local.startswith("defer"):
                    self.send("451 4.3.0 try later\r\n")
                else:
                    tx["rcpts"].append(addr)
                    self.send("250 2.1.5 ok\r\n")
            elif verb == "DATA":
                if not tx or not tx["rcpts"]:
                    self.send("503 5.5.1 no valid recipients\r\n")
                    continue
                self.send("354 go ahead\r\n")
                body = b""
                while True:
                    l = self.line()
                    if l == b".":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    body += l + b"\r\n"
                self.finish(tx, body, False, helo, ehlo_count)
                tx = None
            elif verb == "BDAT":
                words = text.split()
                size = int(words[1])
                last = len(words) > 2 and words[2].upper() == "LAST"
                chunk = self.exact(size)
                if tx is None:
                    self.send("503 5.5.1 MAIL first\r\n")
                    continue
                tx.setdefault("body", b"")
                tx["body"] += chunk
                if last:
                    self.finish(tx, tx.pop("body"), True, helo, ehlo_count)
                    tx = None
                else:
                    self.send("250 2.0.0 %d octets\r\n" % size)
            elif verb == "RSET":
                tx = None
                self.send("250 2.0.0 ok\r\n")
            elif verb == "NOOP":
                self.send("250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                quit_seen = True
                self.send("221 2.0.0 bye\r\n")
                return quit_seen
            else:
                self.send("502 5.5.2 not implemented\r\n")

    def finish(self, tx, body, bdat, helo, ehlo_count):
        if self.args.hold_data:
            time.sleep(self.args.hold_data)
        log(self.args.log, {
            "event": "message", "conn": self.n, "tls": self.tls, "helo": helo,
            "ehlo_count": ehlo_count, "mail_from": tx["mail_from"],
            "mail_params": tx["mail_params"], "rcpts": tx["rcpts"],
            "pipelined": tx["pipelined"], "bdat": bdat, "data_hex": body.hex(),
            "at": time.time(),
        })
        self.send("250 2.0.0 queued\r\n")


def handle(sock, peer, args):
    with lock:
        counter[0] += 1
        n = counter[0]
        active[0] += 1
        active[1] = max(active[1], active[0])
        high = active[1]
    log(args.log, {"event": "connect", "conn": n, "peer": peer[0], "max_concurrent": high})
    quit_seen = False
    try:
        quit_seen = Conn(sock, args, n).serve()
    except (EOFError, OSError, ssl.SSLError, ValueError):
        pass
    finally:
        with lock:
            active[0] -= 1
        log(args.log, {"event": "close", "conn": n, "quit": bool(quit_seen)})
        try:
            sock.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--tls-broken", action="store_true")
    p.add_argument("--tls-stall", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--no-smtputf8", action="store_true")
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--chunking", action="store_true")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--hold-data", type=float, default=0)
    p.add_argument("--throttle-file")
    args = p.parse_args()
    family = socket.AF_INET6 if ":" in args.listen else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((args.listen, args.port))
    srv.listen(128)
    open(args.log, "a").close()
    print(srv.getsockname()[1], flush=True)
    while True:
        sock, peer = srv.accept()
        threading.Thread(target=handle, args=(sock, peer, args), daemon=True).start()


if __name__ == "__main__":
    main()
