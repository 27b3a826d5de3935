"""Injection-API load for deploy/bench/inject/bench.sh: RECIPIENTS recipients
in batches of BATCH, POSTed by THREADS threads to /v1/messages; each
recipient's message renders to about SIZE octets. Prints the number of
recipients the API accepted. Loopback only; every request has a timeout."""
import json
import sys
import threading
import urllib.request

url, key, total, batch, threads, size, domain = sys.argv[1:8]
total, batch, threads, size = int(total), int(batch), int(threads), int(size)

# A text template near SIZE octets once headers are added: one line per
# 64 octets, with the recipient's name in the first.
line = "All the news that fits, in one line of sixty-four octets.  \n"
text = "Hello {{ name }},\n" + line * max(1, (size - 600) // len(line))


def body(first, count):
    return json.dumps({
        "from": "News <news@shop.bench.test>",
        "subject": "Weekly news for {{ name }}",
        "text": text,
        "campaign": "bench",
        "recipients": [
            {"email": f"r{i}@{domain}", "name": f"Reader {i}"} for i in range(first, first + count)
        ],
    }).encode()


accepted = 0
lock = threading.Lock()
batches = [(first, min(batch, total - first)) for first in range(0, total, batch)]
failures = []


def worker():
    global accepted
    while True:
        with lock:
            if not batches or failures:
                return
            first, count = batches.pop(0)
        req = urllib.request.Request(url, data=body(first, count), method="POST", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                answer = json.load(resp)
        except Exception as e:  # noqa: BLE001 - reported, and the run fails
            with lock:
                failures.append(f"batch at {first}: {e}")
            return
        with lock:
            accepted += answer["accepted"]


pool = [threading.Thread(target=worker) for _ in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
if failures:
    sys.exit("\n".join(failures))
print(accepted)
