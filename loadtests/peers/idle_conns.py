#!/usr/bin/env python3
"""Open N idle keep-alive connections to a proxy and report its memory while they are open.

Usage: idle_conns.py --addr HOST:PORT --path PATH [--connections N] [--pid PID]...
                     [--concurrency C] [--settle S] [--label NAME]

Used by loadtests/scripts/peers.sh for "RSS with 10k idle connections". Each connection
sends one request (POST PATH with a 1 x 32 FP32 OIP body, like `cascadia-load
--oip-rows 1`), reads the whole response, and then stays open and silent, so the proxy holds
a real keep-alive client connection (with whatever per-connection state a served request
leaves) and not just an accepted socket. At most C connections are being opened or served
at a time, so the proxy's upstream pool stays small and the measurement is about the
client side.

Once all are open it waits S seconds, reads VmRSS of every --pid, counts how many of its
connections the proxy has not closed (their readers are not at EOF), then closes
them all, waits S seconds again and reads VmRSS once more. It prints one JSON line:

  {"kind": "idle_conns", "label", "target", "connections", "opened", "ok", "failed",
   "first_error", "open_s", "alive", "rss_kib": {pid: kib}, "rss_after_close_kib": {pid: kib}}

The fd limit is raised to the hard limit first (the caller raises the hard limit if it
can). Standard library only.
"""

import argparse
import asyncio
import json
import resource
import time


def oip_body():
    data = ",".join(f"{0.01 * i:.2f}" for i in range(32))
    return (
        '{"inputs":[{"name":"features","shape":[1,32],"datatype":"FP32","data":[' + data + "]}]}"
    ).encode()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def read_response(reader):
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else args.connections + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    host, port = args.addr.rsplit(":", 1)
    body = oip_body()
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.addr}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    gate = asyncio.Semaphore(args.concurrency)
    conns, stats = [], {"ok": 0, "failed": 0, "first_error": None}

    async def open_one():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), args.timeout)
                writer.write(request)
                await writer.drain()
                status = await asyncio.wait_for(read_response(reader), args.timeout)
                conns.append((reader, writer))
                if 200 <= status < 300:
                    stats["ok"] += 1
                else:
                    stats["failed"] += 1
                    stats["first_error"] = stats["first_error"] or f"status {status}"
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                stats["failed"] += 1
                stats["first_error"] = stats["first_error"] or repr(e)

    start = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.connections)))
    open_s = time.monotonic() - start
    await asyncio.sleep(args.settle)

    rss = {str(pid): rss_kib(pid) for pid in args.pid}
    # The event loop has been reading every connection while it slept: a connection the
    # proxy closed has its reader at EOF.
    alive = sum(1 for reader, writer in conns if not reader.at_eof() and not writer.is_closing())

    for _, writer in conns:
        writer.close()
    await asyncio.sleep(args.settle)
    rss_after = {str(pid): rss_kib(pid) for pid in args.pid}

    print(json.dumps({
        "kind": "idle_conns", "label": args.label, "target": args.addr,
        "connections": args.connections, "opened": len(conns), "ok": stats["ok"],
        "failed": stats["failed"], "first_error": stats["first_error"],
        "open_s": round(open_s, 3), "alive": alive, "rss_kib": rss,
        "rss_after_close_kib": rss_after,
    }), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="HOST:PORT of the proxy")
    p.add_argument("--path", default="/v2/models/fraud/infer")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=32,
                   help="connections being opened or served at once [32]")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="process whose VmRSS to report; repeatable")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait before each RSS reading [2]")
    p.add_argument("--timeout", type=float, default=10.0, help="per connection [10]")
    p.add_argument("--label", default="")
    asyncio.run(main(p.parse_args()))
