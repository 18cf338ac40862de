#!/usr/bin/env python3
"""Talks to the gateway with the KServe Python clients.

Usage: kserve_client.py ADDR MODEL ROWS_JSON DATATYPE OUTPUTS
DATATYPE is FP64, FP32 or INT64 (how the rows are sent); OUTPUTS is yes
(ask for predict_proba) or no (ask for nothing, the client's default).
The gRPC client runs with its defaults; the REST client is told to speak
protocol "v2" (its default is KServe's V1 protocol, which is not the Open
Inference Protocol). Prints one JSON object with what each saw: the
positive-class probabilities of `predict_proba` and the gateway's
`cascadia_rows` response parameter.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

NUMPY = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}


def request(model, rows, datatype, outputs):
    x = InferInput(name="x", shape=list(rows.shape), datatype=datatype)
    x.set_data_from_numpy(rows)
    requested = [RequestedOutput("predict_proba")] if outputs else None
    return InferRequest(model_name=model, infer_inputs=[x], request_outputs=requested)


def positive(response, n):
    output = response.get_output_by_name("predict_proba")
    return [float(p) for p in output.as_numpy().reshape(n, -1)[:, -1]]


def rows_parameter(response):
    parameters = response.parameters or {}
    value = parameters.get("cascadia_rows")
    # The gRPC client hands back InferParameter messages.
    return getattr(value, "string_param", value)


async def main():
    addr, model, rows_path, datatype, outputs = sys.argv[1:6]
    outputs = outputs == "yes"
    with open(rows_path) as f:
        rows = np.array(json.load(f)).astype(NUMPY[datatype])
    n = len(rows)

    rest = InferenceRESTClient(config=RESTConfig(protocol="v2"))
    base = f"http://{addr}"
    grpc = InferenceGRPCClient(url=addr)
    rest_answer = await rest.infer(base, request(model, rows, datatype, outputs), model_name=model)
    grpc_answer = await grpc.infer(request(model, rows, datatype, outputs))
    out = {
        "rest_live": await rest.is_server_live(base),
        "rest_ready": await rest.is_model_ready(base, model),
        "rest": positive(rest_answer, n),
        "rest_rows": rows_parameter(rest_answer),
        "grpc_live": await grpc.is_server_live(),
        "grpc_ready": await grpc.is_model_ready(model),
        "grpc": positive(grpc_answer, n),
        "grpc_rows": rows_parameter(grpc_answer),
    }
    await rest.close()
    await grpc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
