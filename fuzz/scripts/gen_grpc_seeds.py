#!/usr/bin/env python3
"""Writes the oip_grpc seed corpus: framed `inference.ModelInferRequest`s
(and a few other model requests), hand-encoded in protobuf with the field
numbers of gateway/oip/src/grpc/messages.rs (KServe's grpc_predict_v2.proto).

Run from fuzz/:  python3 scripts/gen_grpc_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "oip_grpc")


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    """A length-delimited field (string, bytes, message, packed)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return key(field, 2) + varint(len(payload)) + payload


def packed_varints(field, values):
    return ld(field, b"".join(varint(v) for v in values))


def packed_f32(field, values):
    return ld(field, b"".join(struct.pack("<f", v) for v in values))


def packed_f64(field, values):
    return ld(field, b"".join(struct.pack("<d", v) for v in values))


def tensor(name, datatype, shape, contents=b""):
    msg = ld(1, name) + ld(2, datatype) + packed_varints(3, shape)
    if contents:
        msg += ld(5, contents)
    return msg


def request(model, version="", rid="", inputs=(), outputs=(), raw=()):
    msg = b""
    if model:
        msg += ld(1, model)
    if version:
        msg += ld(2, version)
    if rid:
        msg += ld(3, rid)
    for t in inputs:
        msg += ld(5, t)
    for o in outputs:
        msg += ld(6, ld(1, o))
    for r in raw:
        msg += ld(7, r)
    return msg


def frame(msg, flag=0):
    return bytes([flag]) + struct.pack(">I", len(msg)) + msg


SEEDS = {
    # One row, the matrix input `x` of the fuzz model (features a, b).
    "seed-fp32-1row": frame(request("fraud", rid="r1", inputs=[
        tensor("x", "FP32", [1, 2], packed_f32(6, [1.5, -2.0]))], outputs=["p"])),
    # Several rows, FP64, with a version.
    "seed-fp64-3rows": frame(request("cancer", version="2", inputs=[
        tensor("x", "FP64", [3, 2], packed_f64(7, [0.1, 0.2, 1.0, 2.0, -3.0, 4.0]))])),
    # One input per feature, INT64 and INT32.
    "seed-int-per-feature": frame(request("fraud", inputs=[
        tensor("a", "INT64", [2], packed_varints(3, [1, 2])),
        tensor("b", "INT32", [2, 1], packed_varints(2, [3, (1 << 64) - 4])),
        tensor("user", "BYTES", [2], ld(8, "u1") + ld(8, "u2"))])),
    # raw_input_contents instead of typed contents (FP32, 2 rows).
    "seed-raw-fp32": frame(request("fraud", inputs=[tensor("x", "FP32", [2, 2])],
                                   raw=[struct.pack("<4f", 1, 2, 3, 4)])),
    # raw BYTES: 4-byte little-endian length, then the element.
    "seed-raw-bytes": frame(request("fraud", inputs=[
        tensor("user", "BYTES", [2]), tensor("x", "FP64", [1, 2])],
        raw=[struct.pack("<I", 2) + b"u1" + struct.pack("<I", 3) + b"u22",
             struct.pack("<2d", 0.5, 0.25)])),
    # Model name after other fields, twice (last wins).
    "seed-name-late-twice": frame(ld(3, "id") + ld(1, "first") + ld(1, "fraud") + ld(2, "1")),
    # ModelReadyRequest / ModelMetadataRequest share fields 1 and 2.
    "seed-model-ready": frame(ld(1, "fraud") + ld(2, "7")),
    # Unknown fields: varint, fixed64, fixed32.
    "seed-unknown-fields": frame(ld(1, "fraud") + key(99, 0) + varint(42)
                                 + key(100, 1) + bytes(8) + key(101, 5) + bytes(4)),
    # Broken: compressed flag, bad flag, truncated length, trailing bytes,
    # name with invalid UTF-8, name as a varint, an empty message.
    "seed-compressed": frame(ld(1, "fraud"), flag=1),
    "seed-bad-flag": frame(ld(1, "fraud"), flag=2),
    "seed-truncated": frame(ld(1, "fraud"))[:-2],
    "seed-trailing": frame(ld(1, "fraud")) + b"\x00",
    "seed-bad-utf8": frame(b"\x0a\x02\xff\xfe"),
    "seed-name-varint": frame(key(1, 0) + varint(5)),
    "seed-empty": frame(b""),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(SEEDS)} seeds to {os.path.normpath(OUT)}")
