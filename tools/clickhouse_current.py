"""A current ClickHouse engine (chDB, the in-process build of ClickHouse) behind ClickHouse's
HTTP interface, for the tests that check segclust's SQL against a current release.

Debian only packages ClickHouse 18.16, which the main source tests run against as a real
server. Production runs a current release, with types 18.16 lacks (DateTime64,
LowCardinality) and its own parser, type checks and index analysis. chDB is that engine,
version for version (pinned in tools/test.sh), but it has no server, so this file is the thin
HTTP layer the `clickhouse` crate speaks to:

- `GET /ping` answers `Ok.`;
- `POST /?database=..&default_format=..&<setting>=..` runs the body as SQL: every setting is
  applied first with `SET` (an unknown setting is an error, as on a server), then `USE
  database`; the result comes back in the requested format (RowBinary for segclust);
- `POST /?query=INSERT INTO t(..) FORMAT RowBinary` with the rows in the body (the crate's
  inserter, plain or chunked) inserts them through a temporary file;
- a ClickHouse error is HTTP 500 with the server's text and `X-ClickHouse-Exception-Code`.

Every statement the engine runs is appended to `--log` (one line each), so a test can take the
exact SQL segclust sent and ask the engine to EXPLAIN it. One engine serves one request at a
time. What this does not check is the HTTP layer itself: the 18.16 server covers that.

Usage: python tools/clickhouse_current.py --port 0 --data DIR --log FILE
(prints `listening on PORT` once it is ready).
"""

import argparse
import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from chdb import session

# URL parameters that are not settings.
NOT_SETTINGS = {"query", "database", "default_format", "user", "password", "query_id", "session_id"}
INSERT_FORMAT = re.compile(r"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)\s*$", re.I | re.S)
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ERROR_CODE = re.compile(r"Code:\s*(\d+)")


class Engine:
    def __init__(self, data, log):
        self.session = session.Session(data)
        self.lock = threading.Lock()
        self.log = open(log, "a", encoding="utf-8")
        self.tmp = tempfile.mkdtemp(prefix="segclust-chdb-")

    def run(self, sql, fmt="TabSeparated"):
        self.log.write(sql.strip().replace("\n", " ") + "\n")
        self.log.flush()
        return self.session.query(sql, fmt).bytes()

    def request(self, params, body):
        """Runs one HTTP request's statement; returns the response body."""
        with self.lock:
            for name, value in params.items():
                if name in NOT_SETTINGS:
                    continue
                if not SETTING_NAME.match(name):
                    raise ValueError(f"Code: 115. DB::Exception: Unknown setting {name!r}")
                self.session.query(f"SET {name} = '{escape(value)}'")
            # Each request starts in its own database, as on a server (the session keeps one).
            self.session.query(f"USE `{(params.get('database') or 'default').replace('`', '``')}`")
            query = params.get("query")
            if query is not None and body:
                insert = INSERT_FORMAT.match(query)
                if not insert:
                    # ClickHouse appends the body to the `query` parameter.
                    return self.run(query + "\n" + body.decode("utf-8"), params.get("default_format", "TabSeparated"))
                path = os.path.join(self.tmp, "insert.bin")
                with open(path, "wb") as f:
                    f.write(body)
                self.run(f"{insert.group(1)} FROM INFILE '{path}' FORMAT {insert.group(2)}")
                return b""
            sql = query if query is not None else body.decode("utf-8")
            return self.run(sql, params.get("default_format", "TabSeparated"))


def escape(value):
    return value.replace("\\", "\\\\").replace("'", "\\'")


def handler(engine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, headers=()):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        # Trailers, then the blank line.
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path in ("/", "/ping") and not url.query:
                self.reply(200, b"Ok.\n")
            else:
                self.handle_query(b"")

        def do_POST(self):
            self.handle_query(self.read_body())

        def handle_query(self, body):
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            try:
                out = engine.request(params, body)
            except Exception as e:  # the engine's errors go back to the client, as a server's do
                text = str(e)
                code = ERROR_CODE.search(text)
                self.reply(500, (text + "\n").encode(), [("X-ClickHouse-Exception-Code", code.group(1) if code else "1")])
                return
            self.reply(200, out, [("Content-Type", "application/octet-stream")])

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--data", required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    engine = Engine(a.data, a.log)
    version = engine.session.query("SELECT version()", "TabSeparated").bytes().decode().strip()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), handler(engine))
    print(f"listening on {server.server_address[1]} (ClickHouse {version} in chDB)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
