#!/usr/bin/env python3
"""Talks to the gateway with the KServe Python clients.

Usage: kserve_client.py ADDR MODEL ROWS_JSON N
The gRPC client runs with its defaults; the REST client is told to speak
protocol "v2" (its default is KServe's V1 protocol, which is not the Open
Inference Protocol). Prints one JSON object with what each saw and the
positive-class probabilities of `predict_proba` for the first N rows.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def request(model, rows):
    x = InferInput(name="x", shape=list(rows.shape), datatype="FP64")
    x.set_data_from_numpy(rows)
    return InferRequest(model_name=model, infer_inputs=[x], request_outputs=[RequestedOutput("predict_proba")])


def positive(response, n):
    output = response.get_output_by_name("predict_proba")
    return [float(p) for p in output.as_numpy().reshape(n, -1)[:, -1]]


async def main():
    addr, model, rows_path, n = sys.argv[1:5]
    n = int(n)
    with open(rows_path) as f:
        rows = np.array(json.load(f)[:n], dtype=np.float64)

    rest = InferenceRESTClient(config=RESTConfig(protocol="v2"))
    base = f"http://{addr}"
    grpc = InferenceGRPCClient(url=addr)
    out = {
        "rest_live": await rest.is_server_live(base),
        "rest_ready": await rest.is_model_ready(base, model),
        "rest": positive(await rest.infer(base, request(model, rows), model_name=model), n),
        "grpc_live": await grpc.is_server_live(),
        "grpc_ready": await grpc.is_model_ready(model),
        "grpc": positive(await grpc.infer(request(model, rows)), n),
    }
    await rest.close()
    await grpc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
