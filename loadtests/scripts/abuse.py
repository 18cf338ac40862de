#!/usr/bin/env python3
"""The abuser of noisy-neighbour.sh: one misbehaving client, one abuse at a time.

    abuse.py MODE --target HOST:PORT --duration SECONDS [options]

Runs MODE against the gateway's OIP route for --duration seconds, over raw asyncio sockets
(HTTP/1.1 written by hand, so nothing is tidied up on the way out), then prints one JSON
line: what it sent, the statuses it got back and how its connections ended. Python 3
standard library only.

Modes:
  slow-body       CONCURRENCY [8] chunked POSTs, each trickling a valid OIP body one byte
                  every --interval [1] s, one chunk per byte; a new connection as soon as
                  one is answered or closed.
  poison          requests the model server answers 500 (the sim's query of death:
                  "parameters": {"sim_poison": true}), --rate [50] per second over
                  CONNECTIONS [2] keep-alive connections.
  stalled-reader  CONCURRENCY [8] connections (SO_RCVBUF --rcvbuf [4096]) that each send one
                  request with a large answer (--stall-rows [2000000] rows of one feature:
                  4 MB up, 8 MB back, more than the socket buffers on the way hold), read
                  the answer's head and then stop reading for --hold [8] s; then the
                  connection is drained to see whether the gateway cut it off. The
                  connections start 0.25 s apart.
  key-flood       a new random x-api-key on every request, as fast as CONNECTIONS [4]
                  keep-alive connections allow.
  huge-binary     Triton binary-tensor requests (Inference-Header-Content-Length, a JSON
                  head, then raw bytes) with one BOOL tensor of --binary-bytes [4000000]
                  bytes, back to back on CONNECTIONS [4] keep-alive connections.

Every request but key-flood's carries --key [abuser] in x-api-key. --source ADDR binds
every connection to ADDR (e.g. 127.0.0.2), so the gateway sees another client address.

The JSON line: {"kind": "abuse", "mode", "target", "duration_s", "attempts" (requests
started), "statuses" {code: n}, "ended" {how: n} (how each connection or request ended,
see below), "connections" (opened), "bytes_sent", "bytes_received", "latency_s"
{code: {"n", "p50", "max"}} (request start to the end of the answer), "errors" {message: n}
(at most 8 distinct), and the mode's settings}.

"ended" keys: answered (a response, then the abuser went on or closed), server_closed (EOF
from the gateway with no answer pending, or after `connection: close`), reset (ECONNRESET
or EPIPE), closed_without_answer (EOF or reset while a request was unanswered), cut_off
(stalled-reader: EOF or reset before the whole answer arrived), complete (stalled-reader:
the whole answer was still there after the hold: not cut off), still_open (the run ended
first), connect_error.
"""

import argparse
import asyncio
import json
import secrets
import socket
import sys
import time
from collections import Counter

PATH = "/v2/models/fraud/infer"
# The good clients' body shape (cascadia-load --oip-rows 1): one FP32 row of 32 features.
ROW = [round(0.01 * i, 2) for i in range(32)]


def oip_body(parameters=None):
    body = {"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": ROW}]}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body, separators=(",", ":")).encode()


def request_head(target, headers):
    lines = [f"POST {PATH} HTTP/1.1", f"host: {target}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Stats:
    def __init__(self):
        self.attempts = 0
        self.connections = 0
        self.statuses = Counter()
        self.ended = Counter()
        self.errors = Counter()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.latency = {}

    def error(self, exc):
        msg = f"{type(exc).__name__}: {exc}"[:120]
        if msg in self.errors or len(self.errors) < 8:
            self.errors[msg] += 1

    def answered(self, status, seconds):
        self.statuses[str(status)] += 1
        self.latency.setdefault(str(status), []).append(seconds)

    def report(self):
        lat = {}
        for code, xs in sorted(self.latency.items()):
            xs = sorted(xs)
            lat[code] = {"n": len(xs), "p50": round(xs[len(xs) // 2], 4), "max": round(xs[-1], 4)}
        return {
            "attempts": self.attempts,
            "statuses": dict(sorted(self.statuses.items())),
            "ended": dict(sorted(self.ended.items())),
            "connections": self.connections,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "latency_s": lat,
            "errors": dict(self.errors),
        }


class Closed(Exception):
    """The peer closed the connection (EOF) while an answer was expected."""


SOURCE = None  # --source: the local address every connection is bound to


async def connect(host, port, st, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if SOURCE:
            sock.bind((SOURCE, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    st.connections += 1
    return reader, writer


async def read_response(reader, st):
    """Reads one response, discarding its body; returns (status, headers)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise Closed() from e
    st.bytes_received += len(head)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    try:
        if "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise Closed()
                left -= len(chunk)
                st.bytes_received += len(chunk)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                st.bytes_received += len(size_line) + len(data)
                if size == 0:
                    break
        elif status not in (204, 304):
            while chunk := await reader.read(1 << 16):
                st.bytes_received += len(chunk)
            headers["connection"] = "close"
    except asyncio.IncompleteReadError as e:
        raise Closed() from e
    return status, headers


def close(writer):
    try:
        writer.close()
    except OSError:
        pass


# --- keep-alive request loops (poison, key-flood, huge-binary) ----------------------------

async def request_loop(args, st, deadline, make_request, per_conn_rate=None):
    """Sends make_request() back to back (or per_conn_rate per second) on one keep-alive
    connection, reconnecting whenever the gateway closes it, until the deadline."""
    host, port = args.host, args.port
    interval = 1 / per_conn_rate if per_conn_rate else 0
    next_due = time.monotonic()
    reader = writer = None
    while time.monotonic() < deadline:
        if interval:
            delay = next_due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, max(0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    break
            next_due = max(next_due + interval, time.monotonic() - 1)
        if writer is None:
            try:
                reader, writer = await connect(host, port, st)
            except OSError as e:
                st.ended["connect_error"] += 1
                st.error(e)
                await asyncio.sleep(0.2)
                continue
        data = make_request()
        st.attempts += 1
        t0 = time.monotonic()
        try:
            writer.write(data)
            await writer.drain()
            st.bytes_sent += len(data)
            status, headers = await asyncio.wait_for(
                read_response(reader, st), max(0.1, deadline + 5 - time.monotonic()))
            st.answered(status, time.monotonic() - t0)
            if headers.get("connection", "").lower() == "close":
                st.ended["server_closed"] += 1
                close(writer)
                writer = None
        except Closed:
            st.ended["closed_without_answer"] += 1
            close(writer)
            writer = None
        except (ConnectionResetError, BrokenPipeError) as e:
            st.ended["reset"] += 1
            st.error(e)
            close(writer)
            writer = None
        except (OSError, asyncio.TimeoutError) as e:
            st.ended["closed_without_answer"] += 1
            st.error(e)
            close(writer)
            writer = None
    if writer is not None:
        st.ended["still_open"] += 1
        close(writer)


def poison(args, st, deadline):
    body = oip_body({"sim_poison": True})
    data = request_head(args.target, [("content-type", "application/json"),
                                      ("content-length", len(body)),
                                      ("x-api-key", args.key)]) + body
    per_conn = args.rate / args.connections
    return [request_loop(args, st, deadline, lambda: data, per_conn)
            for _ in range(args.connections)]


def key_flood(args, st, deadline):
    body = oip_body()

    def make():
        return request_head(args.target, [("content-type", "application/json"),
                                          ("content-length", len(body)),
                                          ("x-api-key", secrets.token_hex(8))]) + body
    return [request_loop(args, st, deadline, make) for _ in range(args.connections)]


def huge_binary(args, st, deadline):
    n = args.binary_bytes
    head = json.dumps({"inputs": [{"name": "flags", "shape": [1, n], "datatype": "BOOL",
                                   "parameters": {"binary_data_size": n}}]},
                      separators=(",", ":")).encode()
    body = head + b"\x01" * n
    data = request_head(args.target, [("content-type", "application/octet-stream"),
                                      ("inference-header-content-length", len(head)),
                                      ("content-length", len(body)),
                                      ("x-api-key", args.key)]) + body
    return [request_loop(args, st, deadline, lambda: data) for _ in range(args.connections)]


# --- slow-body -----------------------------------------------------------------------------

async def slow_body_worker(args, st, deadline):
    body = oip_body()
    head = request_head(args.target, [("content-type", "application/json"),
                                      ("transfer-encoding", "chunked"),
                                      ("x-api-key", args.key)])
    while time.monotonic() < deadline:
        try:
            reader, writer = await connect(args.host, args.port, st)
        except OSError as e:
            st.ended["connect_error"] += 1
            st.error(e)
            await asyncio.sleep(0.2)
            continue
        st.attempts += 1
        t0 = time.monotonic()
        answer = asyncio.ensure_future(read_response(reader, st))
        sent = 0
        write_failed = None
        try:
            writer.write(head)
            await writer.drain()
            st.bytes_sent += len(head)
            while not answer.done() and time.monotonic() < deadline:
                if sent < len(body):
                    chunk = b"1\r\n" + body[sent:sent + 1] + b"\r\n"
                    sent += 1
                elif sent == len(body):
                    chunk = b"0\r\n\r\n"
                    sent += 1
                else:
                    chunk = b""
                if chunk:
                    writer.write(chunk)
                    await writer.drain()
                    st.bytes_sent += len(chunk)
                await asyncio.wait({answer}, timeout=max(0, min(args.interval,
                                                                deadline - time.monotonic())))
        except (ConnectionResetError, BrokenPipeError) as e:
            write_failed = e
        # A refusal may have been written just before the gateway closed: give it a moment.
        if not answer.done() and write_failed is not None:
            await asyncio.wait({answer}, timeout=1)
        if answer.done():
            try:
                status, _ = answer.result()
                st.answered(status, time.monotonic() - t0)
                st.ended["answered"] += 1
            except Closed:
                st.ended["closed_without_answer"] += 1
            except (ConnectionResetError, BrokenPipeError) as e:
                st.ended["closed_without_answer"] += 1
                st.error(e)
            except (OSError, ValueError, IndexError) as e:
                st.ended["closed_without_answer"] += 1
                st.error(e)
        else:
            answer.cancel()
            if write_failed is not None:
                st.ended["reset"] += 1
                st.error(write_failed)
            else:
                st.ended["still_open"] += 1
        close(writer)


# --- stalled-reader ------------------------------------------------------------------------

async def stalled_reader_worker(args, st, deadline, body, delay):
    await asyncio.sleep(delay)
    data = request_head(args.target, [("content-type", "application/json"),
                                      ("content-length", len(body)),
                                      ("x-api-key", args.key)]) + body
    while time.monotonic() < deadline:
        try:
            reader, writer = await connect(args.host, args.port, st, rcvbuf=args.rcvbuf)
        except OSError as e:
            st.ended["connect_error"] += 1
            st.error(e)
            await asyncio.sleep(0.2)
            continue
        st.attempts += 1
        t0 = time.monotonic()
        try:
            writer.write(data)
            await writer.drain()
            st.bytes_sent += len(data)
        except (ConnectionResetError, BrokenPipeError) as e:
            st.ended["reset"] += 1
            st.error(e)
            close(writer)
            continue
        # Read until the answer's head has arrived (the model server has answered and the
        # gateway is sending), then stop reading for --hold (even past the run's end, so
        # every attempt is judged); then drain what the gateway left on the connection.
        head = bytearray()
        got = 0
        eof = reset = False
        t_head = None
        try:
            while b"\r\n\r\n" not in head:
                chunk = await asyncio.wait_for(reader.read(4096), 30)
                if not chunk:
                    eof = True
                    break
                head += chunk
                got += len(chunk)
            t_head = time.monotonic()
        except asyncio.TimeoutError:
            pass
        except (ConnectionResetError, BrokenPipeError) as e:
            reset = True
            st.error(e)
        if not (eof or reset):
            await asyncio.sleep(args.hold)
        while not (eof or reset):
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 2.0)
            except asyncio.TimeoutError:
                break
            except (ConnectionResetError, BrokenPipeError) as e:
                reset = True
                st.error(e)
                break
            if not chunk:
                eof = True
                break
            if len(head) < 65536:
                head += chunk[:65536 - len(head)]
            got += len(chunk)
        st.bytes_received += got
        status, length, head_len = parse_head(bytes(head))
        if status is not None:
            # Latency here: to the answer's head.
            st.answered(status, (t_head or time.monotonic()) - t0)
        complete = length is not None and got - head_len >= length
        if complete:
            st.ended["complete"] += 1
        elif got == 0:
            st.ended["closed_without_answer" if (eof or reset) else "still_open"] += 1
        elif eof or reset:
            st.ended["cut_off"] += 1
        else:
            st.ended["still_open"] += 1
        close(writer)


def parse_head(data):
    """(status, content-length, head bytes) of a response's start; Nones when absent."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None, None, 0
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        status = None
    length = None
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, length, len(head) + 4


def stalled_reader(args, st, deadline):
    n = args.stall_rows
    body = (b'{"inputs":[{"name":"features","shape":[%d,1],"datatype":"FP32","data":['
            % n) + b",".join([b"0"] * n) + b"]}]}"
    return [stalled_reader_worker(args, st, deadline, body, 0.25 * i)
            for i in range(args.concurrency)]


def slow_body(args, st, deadline):
    return [slow_body_worker(args, st, deadline) for _ in range(args.concurrency)]


MODES = {
    "slow-body": (slow_body, {"concurrency": 8}),
    "poison": (poison, {"connections": 2}),
    "stalled-reader": (stalled_reader, {"concurrency": 8}),
    "key-flood": (key_flood, {"connections": 4}),
    "huge-binary": (huge_binary, {"connections": 4}),
}


async def main(args):
    make, _ = MODES[args.mode]
    st = Stats()
    started = time.monotonic()
    deadline = started + args.duration
    await asyncio.gather(*make(args, st, deadline))
    rec = {"kind": "abuse", "mode": args.mode, "target": args.target,
           "duration_s": round(time.monotonic() - started, 3)}
    rec.update(st.report())
    settings = {"key": args.key if args.mode != "key-flood" else "random per request",
                "source": args.source or "any"}
    if args.mode in ("slow-body", "stalled-reader"):
        settings["concurrency"] = args.concurrency
    else:
        settings["connections"] = args.connections
    if args.mode == "slow-body":
        settings["interval_s"] = args.interval
    if args.mode == "poison":
        settings["rate"] = args.rate
    if args.mode == "stalled-reader":
        settings.update(hold_s=args.hold, rcvbuf=args.rcvbuf, rows=args.stall_rows)
    if args.mode == "huge-binary":
        settings["binary_bytes"] = args.binary_bytes
    rec["settings"] = settings
    print(json.dumps(rec), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--target", required=True, help="HOST:PORT of the gateway")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--key", default="abuser", help="x-api-key (not key-flood)")
    p.add_argument("--source", help="bind every connection to this local address")
    p.add_argument("--concurrency", type=int, help="slow-body, stalled-reader [8]")
    p.add_argument("--connections", type=int, help="poison [2], key-flood [4], huge-binary [4]")
    p.add_argument("--interval", type=float, default=1.0, help="slow-body: s between bytes")
    p.add_argument("--rate", type=float, default=50, help="poison: requests per second")
    p.add_argument("--hold", type=float, default=8.0, help="stalled-reader: s not reading")
    p.add_argument("--rcvbuf", type=int, default=4096, help="stalled-reader: SO_RCVBUF")
    p.add_argument("--stall-rows", type=int, default=2_000_000, help="stalled-reader: rows")
    p.add_argument("--binary-bytes", type=int, default=4_000_000, help="huge-binary: BOOLs")
    args = p.parse_args(argv)
    defaults = MODES[args.mode][1]
    args.concurrency = args.concurrency or defaults.get("concurrency", 8)
    args.connections = args.connections or defaults.get("connections", 4)
    global SOURCE
    SOURCE = args.source
    args.host, _, port = args.target.rpartition(":")
    args.port = int(port)
    return args


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(130)
