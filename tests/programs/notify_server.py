"""A server in plain Python that speaks systemd's protocols, for the tests of `prefork run`.

It serves HTTP on the inherited socket (LISTEN_FDS, descriptor 3) and answers each request
with the text of the file named by VERSION_FILE as it was when the server started. It sends
READY=1 to NOTIFY_SOCKET after READY_DELAY seconds, and exits with status 1 at once when that
text is "exit", like a deploy whose code does not start. With BEAT_ONCE set it sends one
WATCHDOG=1 and then hangs, like a server whose event loop is stuck.
"""

import http.server
import os
import socket
import sys
import time


def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def main():
    assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not this process"
    assert os.environ["LISTEN_FDS"] == "1", os.environ["LISTEN_FDS"]
    with open(os.environ["VERSION_FILE"]) as f:
        version = f.read().strip()
    if version == "exit":
        print("notify_server: told to fail", file=sys.stderr, flush=True)
        sys.exit(1)
    listener = socket.socket(fileno=3)
    body = f"{version} {os.environ['PREFORK_WORKER']} {os.getpid()}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    time.sleep(float(os.environ.get("READY_DELAY", "0")))
    notify("READY=1")
    if os.environ.get("BEAT_ONCE"):
        notify("WATCHDOG=1")
        print("notify_server: beat once, now hanging", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
    print(
        f"notify_server: worker {os.environ['PREFORK_WORKER']} serving {version}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
