# A webhook receiver for the tests: python3 receiver.py SECRET_FILE FAIL_FIRST.
# The secret is read from SECRET_FILE at each POST (the test writes it once
# the webhook is registered with this receiver's URL).
# Listens on 127.0.0.1, an ephemeral port (printed first as "port N"),
# checks every POST's Tern-Signature with the crates/stats README snippet,
# answers 500 to the first FAIL_FIRST POSTs and 200 after, and prints one
# JSON line per POST: {"n", "verified", "status", "events"}.
import hashlib, hmac, json, ssl, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verify(secret: bytes, header: str, body: bytes, tolerance=300) -> bool:
    parts = dict(p.strip().split("=", 1) for p in header.split(","))
    t = parts["t"]
    if abs(time.time() - int(t)) > tolerance:
        return False
    mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"])


SECRET_FILE = sys.argv[1]
FAIL_FIRST = int(sys.argv[2])
seen = 0


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        seen += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(SECRET_FILE, "rb") as f:
            secret = f.read().strip()
        ok = verify(secret, self.headers.get("Tern-Signature", ""), body)
        status = 500 if seen <= FAIL_FIRST else (200 if ok else 401)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        line = {"n": seen, "verified": ok, "status": status, "events": json.loads(body)}
        print(json.dumps(line), flush=True)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Hook)
if len(sys.argv) > 4:
    # https: argv[3] the certificate chain, argv[4] its key (OpenSSL).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
