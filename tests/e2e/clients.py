#!/usr/bin/env python3
"""Talks to the gateway with the standard Triton clients, default settings.

Usage: clients.py HTTP_ADDR GRPC_ADDR MODEL ROWS_JSON N
Prints one JSON object: liveness, readiness and metadata as each client saw
them, and the positive-class probabilities of `predict_proba` for the first
N rows, over HTTP (binary tensor extension, tritonclient's default) and gRPC.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def infer(module, client, model, rows):
    x = module.InferInput("x", list(rows.shape), "FP64")
    x.set_data_from_numpy(rows)
    result = client.infer(model, inputs=[x], outputs=[module.InferRequestedOutput("predict_proba")])
    proba = result.as_numpy("predict_proba")
    return [float(p) for p in proba.reshape(len(rows), -1)[:, -1]]


def main():
    http_addr, grpc_addr, model, rows_path, n = sys.argv[1:6]
    with open(rows_path) as f:
        rows = np.array(json.load(f)[: int(n)], dtype=np.float64)
    http = httpclient.InferenceServerClient(url=http_addr)
    grpc = grpcclient.InferenceServerClient(url=grpc_addr)
    out = {
        "http_live": http.is_server_live(),
        "http_ready": http.is_model_ready(model),
        "http_metadata_name": http.get_model_metadata(model)["name"],
        "http": infer(httpclient, http, model, rows),
        "grpc_live": grpc.is_server_live(),
        "grpc_ready": grpc.is_model_ready(model),
        "grpc_metadata_name": grpc.get_model_metadata(model).name,
        "grpc": infer(grpcclient, grpc, model, rows),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
