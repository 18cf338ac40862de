#!/usr/bin/env python3
"""Instructions per proxied request from a callgrind.sh results file, as Markdown.

Usage: summarize_callgrind.py RESULTS.jsonl

Also the helpers callgrind.sh calls (standard library only):

  summarize_callgrind.py client ADDR PATH BODY_FILE N   N sequential POSTs of BODY_FILE on one
      keep-alive connection to ADDR, each answer read in full before the next request is
      sent; one JSON line: requests, ok, seconds, the first answer's status line and headers.
      Exit status 1 (after printing the line) unless every answer was a 200.
  summarize_callgrind.py total CALLGRIND_OUT            the run's total Ir ("totals:" line)
  summarize_callgrind.py functions inclusive|self ANNOTATE_N1 ANNOTATE_N2 N1 N2 [TOP]
      from two `callgrind_annotate --threshold=100` outputs (with --inclusive=yes, or
      without for self cost): every function's (Ir at N2 - Ir at N1) / (N2 - N1), the TOP
      [30] largest, as one JSON line {"kind": "functions", "mode", "per_request":
      [[ir, name], ...]}; a function's entries for the several source files of its inlined
      code are merged (self: summed; inclusive: the largest)
  summarize_callgrind.py syscalls STRACE_C_OUT          total calls from `strace -c -f -o`

Record kinds in RESULTS: "meta"; "run" (leg, n, repeat, ir, seconds, ok, first_response);
"idle" (leg, seconds, ir: the proxy started and left idle, for the instructions its timers
cost per second); "functions" (leg, mode, per_request); "syscalls" (leg, n, calls).

Instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1) for each leg (means over repeats
when there are several), so start-up and shutdown cancel. A proxy's timers also run for
longer in the N2 run; the "idle" runs measure that rate, and the table shows what it adds
to the per-request figure over the measured runs' extra wall time (under callgrind), as a
bound, without subtracting it.
"""

import json
import re
import socket
import sys
import time
from collections import defaultdict

from summarize_common import fmt, load, machine_lines, of_kind, total_ir

REF = "nginx"
# libc's allocator and memory copies, by their (self-cost) function names.
ALLOC = re.compile(r"^(malloc|free|realloc|calloc|cfree|_int_\w+|malloc_consolidate|"
                   r"unlink_chunk\S*|tcache\w*|__libc_(malloc|free|realloc|calloc)|"
                   r"__mem(cpy|move|set)\w*|mem(cpy|move|set)\w*)(@\S*)?$")
ORDER = ("cascadia", "nginx", "haproxy", "pingora")


# --- client --------------------------------------------------------------------------------

def read_answer(sock, buf):
    """One HTTP/1.1 response from sock: (status line, headers, body length, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a response head")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status, headers = lines[0], [tuple(h.split(":", 1)) for h in lines[1:]]
    fields = {k.strip().lower(): v.strip() for k, v in headers}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = 0
        while True:
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside a chunked body")
                buf += chunk
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside a chunk")
                buf += chunk
            buf = buf[size + 2:]
            body += size
            if size == 0:
                return status, headers, body, buf
    length = int(fields.get("content-length", "0"))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a body")
        buf += chunk
    return status, headers, length, buf[length:]


def client(addr, path, body_file, n):
    host, port = addr.rsplit(":", 1)
    with open(body_file, "rb") as f:
        body = f.read()
    request = (f"POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = {"requests": 0, "ok": 0, "request_bytes": len(request)}
    buf = b""
    started = time.monotonic()
    try:
        for i in range(n):
            sock.sendall(request)
            out["requests"] += 1
            status, headers, length, buf = read_answer(sock, buf)
            if status.split(" ")[1:2] == ["200"]:
                out["ok"] += 1
            elif "first_error" not in out:
                out["first_error"] = {"index": i, "status": status}
            if i == 0:
                out["first_response"] = {"status": status,
                                         "headers": [[k.strip(), v.strip()] for k, v in headers],
                                         "body_bytes": length}
    except (OSError, ValueError) as e:
        out["error"] = str(e)
    out["seconds"] = round(time.monotonic() - started, 3)
    sock.close()
    print(json.dumps(out))
    return 0 if out["ok"] == n else 1


# --- callgrind and strace outputs ----------------------------------------------------------

# "  1,234,567 (12.34%)  file:function [object]" (callgrind_annotate 3.x, one event).
ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([\d.]+%\)\s+)?(\S.*?)\s*$")


def annotate_functions(path):
    """name -> inclusive Ir, from a callgrind_annotate --inclusive=yes output."""
    funcs, started = {}, False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not started:
                # The function list follows the "Ir  file:function" header and its rule.
                started = "file:function" in line
                continue
            m = ANNOTATE_LINE.match(line)
            if not m:
                continue
            name = m.group(2)
            if name.startswith("PROGRAM TOTALS") or name.startswith("-"):
                continue
            funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return funcs


# The object a callgrind_annotate entry names at its end: " [/path/to/object]".
OBJECT_SUFFIX = re.compile(r" \[/[^\]]*\]$")


def function_name(key):
    """"file:function [object]" -> "function" (callgrind_annotate splits a function into one
    entry per source file its inlined code came from; this names them alike)."""
    return OBJECT_SUFFIX.sub("", key.split(":", 1)[1] if ":" in key else key)


def functions(mode, ann1, ann2, n1, n2, top=30):
    """Per-request Ir by function from two annotate outputs of the same mode. Entries of one
    function (one per source file of its inlined code) are merged: self costs add up;
    inclusive costs overlap, so the largest entry stands for the function."""
    merged = []
    for path in (ann1, ann2):
        per_fn = defaultdict(int)
        for key, ir in annotate_functions(path).items():
            name = function_name(key)
            per_fn[name] = per_fn[name] + ir if mode == "self" else max(per_fn[name], ir)
        merged.append(per_fn)
    f1, f2 = merged
    per = [((f2[name] - f1.get(name, 0)) / (n2 - n1), name) for name in f2]
    per.sort(key=lambda x: -x[0])
    print(json.dumps({"kind": "functions", "mode": mode,
                      "per_request": [[round(ir, 1), name] for ir, name in per[:top]]}))


def syscalls(path):
    """Total calls of a `strace -c` summary (its "total" line)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            cols = line.split()
            if cols and cols[-1] == "total":
                # % time, seconds, usecs/call, calls, [errors,] total
                return int(cols[3])
    sys.exit(f"{path}: no total line")


# --- summary -------------------------------------------------------------------------------

def mean(values):
    return sum(values) / len(values) if values else None


def summarize(path):
    meta, records = load(path)
    if meta is None:
        sys.exit(f"{path}: no meta line")
    n1, n2 = int(meta["n1"]), int(meta["n2"])
    runs = defaultdict(lambda: defaultdict(list))      # leg -> n -> [run]
    for r in of_kind(records, "run"):
        runs[r["leg"]][int(r["n"])].append(r)
    idle = defaultdict(list)                            # leg -> [(seconds, ir)]
    for r in of_kind(records, "idle"):
        idle[r["leg"]].append((r["seconds"], r["ir"]))
    sys_calls = defaultdict(dict)
    for r in of_kind(records, "syscalls"):
        sys_calls[r["leg"]][int(r["n"])] = r["calls"]
    legs = [leg for leg in ORDER if leg in runs] + sorted(set(runs) - set(ORDER))

    per_req, rows = {}, {}
    for leg in legs:
        a, b = runs[leg].get(n1, []), runs[leg].get(n2, [])
        if not a or not b:
            continue
        ir1, ir2 = mean([r["ir"] for r in a]), mean([r["ir"] for r in b])
        s1, s2 = mean([r["seconds"] for r in a]), mean([r["seconds"] for r in b])
        per = (ir2 - ir1) / (n2 - n1)
        per_req[leg] = per
        spread = [r["ir"] for r in a + b]
        reps = {n: sorted(r["ir"] for r in rs) for n, rs in ((n1, a), (n2, b))}
        # Timers: Ir per idle second from the two idle runs (the difference, so start-up
        # cancels), times the extra wall time of the N2 run, per extra request.
        timer = None
        pts = sorted(idle.get(leg, []))
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            rate = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
            timer = max(rate, 0) * (s2 - s1) / (n2 - n1)
        sc = sys_calls.get(leg, {})
        calls = ((sc[n2] - sc[n1]) / (n2 - n1)) if n1 in sc and n2 in sc else None
        rows[leg] = {"ir1": ir1, "ir2": ir2, "per": per, "s1": s1, "s2": s2, "timer": timer,
                     "calls": calls, "reps": reps, "spread": spread}

    out = ["# User-space instructions per proxied request (callgrind)", ""]
    out += machine_lines(meta)
    out.append(f"- {meta.get('valgrind')}; N1 = {n1}, N2 = {n2} sequential requests on one "
               f"keep-alive connection; upstream: {meta.get('upstream')}")
    out.append(f"- request: `POST {meta.get('infer_path')}`, {meta.get('body_bytes')}-byte 1 × 32 "
               f"FP32 OIP JSON body; proxies pinned to CPU {meta.get('gateway_cpu')}, "
               f"upstream and client to CPU {meta.get('load_cpu')}")
    for key in ("cascadia_bin", "nginx_version", "haproxy_version", "pingora_version"):
        if meta.get(key):
            out.append(f"- {key.replace('_', ' ')}: {meta[key]}")
    out += ["", "Instructions per request = (Ir(N2) − Ir(N1)) / (N2 − N1), user space only.", ""]
    ref = per_req.get(REF)
    out.append("| proxy | Ir at N1 | Ir at N2 | instructions / request | × nginx "
               "| timers' share (bound) | syscalls / request |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for leg in legs:
        if leg not in rows:
            continue
        r = rows[leg]
        ratio = f"{r['per'] / ref:.2f}" if ref else "n/a"
        timer = (f"{r['timer']:,.0f} ({100 * r['timer'] / r['per']:.1f}%)"
                 if r["timer"] is not None else "n/a")
        out.append(f"| {leg} | {r['ir1']:,.0f} | {r['ir2']:,.0f} | {r['per']:,.0f} | {ratio} "
                   f"| {timer} | {fmt(r['calls'], 2)} |")
    out.append("")
    out.append("Wall time under callgrind (s), N1 → N2: " + ", ".join(
        f"{leg} {rows[leg]['s1']:.1f} → {rows[leg]['s2']:.1f}" for leg in legs if leg in rows))
    multi = {leg: r["reps"] for leg, r in rows.items()
             if any(len(v) > 1 for v in r["reps"].values())}
    if multi:
        out.append("")
        out.append("Repeats (Ir of each run, and the largest difference between repeats of the "
                   "same N, per request):")
        for leg, reps in multi.items():
            worst = max((max(v) - min(v)) for v in reps.values())
            out.append(f"- {leg}: " + "; ".join(
                f"N={n}: " + ", ".join(f"{x:,}" for x in v) for n, v in reps.items())
                       + f" (spread {worst:,} Ir = {worst / (n2 - n1):,.1f} per request)")
    titles = {"inclusive": "inclusive Ir (the function and everything it calls)",
              "self": "self Ir (the function's own instructions)"}
    for rec in of_kind(records, "functions"):
        leg, mode, per = rec["leg"], rec.get("mode", "inclusive"), per_req.get(rec["leg"])
        if leg != "cascadia" or not per:
            continue
        out += ["", f"Where {leg}'s instructions per request go, by {titles[mode]} per "
                "request: the (N2 − N1) difference of `callgrind_annotate"
                f"{' --inclusive=yes' if mode == 'inclusive' else ''}` ÷ (N2 − N1), and its "
                "share of the instructions per request:", "",
                "| # | Ir / request | share | function |", "|---:|---:|---:|---|"]
        for i, (ir, name) in enumerate(rec["per_request"], 1):
            out.append(f"| {i} | {ir:,.0f} | {100 * ir / per:.1f}% | `{name}` |")
    self_recs = [r for r in of_kind(records, "functions") if r.get("mode") == "self"]
    if self_recs:
        out += ["", "Self Ir per request in the allocator and memcpy/memmove (libc `malloc`, "
                "`free`, `realloc`, `_int_*`, `mem*`), every proxy:", ""]
        for rec in self_recs:
            per = per_req.get(rec["leg"])
            if not per:
                continue
            alloc = sum(ir for ir, name in rec["per_request"] if ALLOC.match(name))
            out.append(f"- {rec['leg']}: {alloc:,.0f} ({100 * alloc / per:.1f}%, among its "
                       f"top {len(rec['per_request'])} self-cost functions)")
    if meta.get("annotate_file"):
        out += ["", f"`callgrind_annotate --inclusive=yes` of Cascadia's N2 run (top 30): "
                f"`{meta['annotate_file']}`"]
    first = {}
    for r in of_kind(records, "run"):
        first.setdefault(r["leg"], r.get("first_response"))
    if first:
        out += ["", "First response each proxy sent back (status; headers):"]
        for leg in legs:
            fr = first.get(leg)
            if fr:
                hdrs = ", ".join(f"{k}: {v}" for k, v in fr["headers"])
                out.append(f"- {leg}: `{fr['status']}`; {hdrs}; body {fr['body_bytes']} B")
    return "\n".join(out)


def main(argv):
    if len(argv) >= 2 and argv[1] == "client" and len(argv) == 6:
        return client(argv[2], argv[3], argv[4], int(argv[5]))
    if len(argv) == 3 and argv[1] == "total":
        print(total_ir(argv[2]))
        return 0
    if len(argv) in (7, 8) and argv[1] == "functions" and argv[2] in ("inclusive", "self"):
        functions(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]),
                  int(argv[7]) if len(argv) == 8 else 30)
        return 0
    if len(argv) == 3 and argv[1] == "syscalls":
        print(syscalls(argv[2]))
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.exit(__doc__.strip().splitlines()[2])
    print(summarize(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
