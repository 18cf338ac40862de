#!/usr/bin/env python3
"""Every standard client, at its default settings, against the gateway's
cascade routes in front of real MLServer; every number checked against
scikit-learn's predict_proba.

Usage: cascade_matrix.py GATEWAY_ADDR MODELS_DIR KSERVE_PYTHON ACCEPT_BELOW REJECT_ABOVE

The reference is computed here, from the very model.joblib files MLServer
serves: stage 1's numbers must equal the logistic regression's
predict_proba on the values the client sent (as float64), stage 2's the
gradient boosting's, to 1e-9, and the rows the gateway says it answered
locally (the `cascadia_rows` parameter) must be exactly the rows the bands
select offline. Clients: plain `requests` (which sends Accept-Encoding:
gzip), tritonclient HTTP (binary tensors) and gRPC, and the KServe REST and
gRPC clients (run in their own venv by kserve_client.py). Cases: FP64, FP32
and INT64 inputs, with and without `outputs`, a single `[F]` row, and
tritonclient's compression options (a gzipped answer, gzipped requests).

Prints one JSON summary line; exits 1 after listing every mismatch.
"""

import json
import os
import subprocess
import sys

import joblib
import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

TOLERANCE = 1e-9
HERE = os.path.dirname(os.path.abspath(__file__))
NUMPY = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}
# Cascade routes: (route, dataset, input datatypes a user would send).
ROUTES = [
    ("cancer", "cancer", ["FP64", "FP32"]),
    ("digits", "digits", ["INT64", "FP64", "FP32"]),
]


class Reference:
    """What a route must answer for a dataset's rows sent as `datatype`."""

    def __init__(self, models, dataset, datatype, accept, reject):
        with open(os.path.join(models, f"{dataset}-rows.json")) as f:
            self.x = np.array(json.load(f)).astype(NUMPY[datatype])
        self.datatype = datatype
        lr = joblib.load(os.path.join(models, "models", f"{dataset}-lr", "model.joblib"))
        gbc = joblib.load(os.path.join(models, "models", f"{dataset}-gbc", "model.joblib"))
        # Stage 1 scores in float64 whatever the wire type; stage 2 is
        # MLServer running the model on the array as decoded.
        self.lr = lr.predict_proba(self.x.astype(np.float64))[:, 1]
        self.gbc = gbc.predict_proba(self.x)[:, 1]
        self.local = (self.lr < accept) | (self.lr > reject)
        self.expected = np.where(self.local, self.lr, self.gbc)
        self.codes = "".join("l" if local else "s" for local in self.local)

    def json_rows(self):
        if self.datatype == "INT64":
            return [[int(v) for v in row] for row in self.x]
        return [[float(v) for v in row] for row in self.x]


failures = []
summary = {"cases": 0, "rows": 0, "local_share": {}}


def check(what, values, rows_parameter, reference, index=None):
    """Compares one answer with the reference (`index`: the rows sent)."""
    summary["cases"] += 1
    expected = reference.expected if index is None else reference.expected[index]
    codes = reference.codes if index is None else "".join(reference.codes[i] for i in index)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != expected.shape:
        failures.append(f"{what}: {values.shape[0]} values for {expected.shape[0]} rows")
        return
    summary["rows"] += len(values)
    worst = int(np.argmax(np.abs(values - expected)))
    if abs(values[worst] - expected[worst]) > TOLERANCE:
        stage = "stage 1" if codes[worst] == "l" else "stage 2"
        failures.append(
            f"{what}: row {worst} ({stage}) is {values[worst]!r}, scikit-learn says {expected[worst]!r}"
        )
    if rows_parameter != codes:
        failures.append(f"{what}: cascadia_rows {rows_parameter!r}, offline bands say {codes!r}")


def positive(proba, n):
    return np.asarray(proba, dtype=np.float64).reshape(n, -1)[:, -1]


def rest_body(reference, index, outputs, shape=None):
    rows = reference.json_rows()
    data = [rows[i] for i in index]
    body = {
        "inputs": [{
            "name": "x",
            "shape": shape or [len(data), len(data[0])],
            "datatype": reference.datatype,
            "data": data,
        }]
    }
    if outputs:
        body["outputs"] = [{"name": "predict_proba"}]
    return body


def with_requests(addr, route, reference):
    """Plain `requests` at its defaults: Accept-Encoding: gzip, deflate."""
    url = f"http://{addr}/v2/models/{route}/infer"
    everything = list(range(len(reference.x)))
    for outputs in (True, False):
        what = f"requests {route} {reference.datatype} outputs={outputs}"
        response = requests.post(url, json=rest_body(reference, everything, outputs), timeout=30)
        if response.status_code != 200:
            failures.append(f"{what}: HTTP {response.status_code} {response.text[:200]}")
            continue
        answer = response.json()
        output = answer["outputs"][0]
        if output["datatype"] != "FP64" or output["shape"] != [len(everything), 2]:
            failures.append(f"{what}: output {output['datatype']} {output['shape']}")
        rows = answer.get("parameters", {}).get("cascadia_rows")
        check(what, positive(output["data"], len(everything)), rows, reference)
        if outputs:
            share = reference.codes.count("l") / len(reference.codes)
            summary["local_share"][f"{route}/{reference.datatype}"] = round(share, 4)
    # One row shaped [F], confident and uncertain: one row of answer.
    for label, code in (("local", "l"), ("escalated", "s")):
        if code not in reference.codes:
            continue
        i = reference.codes.index(code)
        width = reference.x.shape[1]
        what = f"requests {route} {reference.datatype} [F] row {label}"
        response = requests.post(url, json=rest_body(reference, [i], False, shape=[width]), timeout=30)
        if response.status_code != 200:
            failures.append(f"{what}: HTTP {response.status_code} {response.text[:200]}")
            continue
        answer = response.json()
        if answer["outputs"][0]["shape"] != [1, 2]:
            failures.append(f"{what}: shape {answer['outputs'][0]['shape']}")
        check(what, positive(answer["outputs"][0]["data"], 1), answer["parameters"]["cascadia_rows"], reference, [i])


def with_triton(addr, route, reference):
    """tritonclient HTTP (binary tensors, its default) and gRPC."""
    n = len(reference.x)
    for module, client in (
        (httpclient, httpclient.InferenceServerClient(url=addr)),
        (grpcclient, grpcclient.InferenceServerClient(url=addr)),
    ):
        transport = "http" if module is httpclient else "grpc"
        # Without outputs (the client's default), with them, and with the
        # compression a client may ask for, which changes nothing but the
        # bytes: a gzipped answer (HTTP), a gzipped request (HTTP and gRPC).
        cases = [
            ("outputs=True", {"outputs": [module.InferRequestedOutput("predict_proba")]}),
            ("outputs=False", {}),
        ]
        if transport == "http":
            cases += [
                ("response gzip", {"response_compression_algorithm": "gzip"}),
                ("request gzip", {"request_compression_algorithm": "gzip"}),
            ]
        else:
            cases += [("request gzip", {"compression_algorithm": "gzip"})]
        for label, options in cases:
            what = f"triton {transport} {route} {reference.datatype} {label}"
            x = module.InferInput("x", list(reference.x.shape), reference.datatype)
            x.set_data_from_numpy(reference.x)
            try:
                result = client.infer(route, inputs=[x], **options)
            except Exception as error:  # noqa: BLE001 - every failure is a finding
                failures.append(f"{what}: {error}")
                continue
            if transport == "http":
                rows = result.get_response().get("parameters", {}).get("cascadia_rows")
            else:
                rows = result.get_response().parameters["cascadia_rows"].string_param
            proba = result.as_numpy("predict_proba")
            if proba is None or proba.dtype != np.float64:
                failures.append(f"{what}: predict_proba is {None if proba is None else proba.dtype}")
                continue
            check(what, positive(proba, n), rows, reference)


def with_kserve(kserve_python, addr, route, reference, models, dataset):
    for outputs in ("yes", "no"):
        what = f"kserve {route} {reference.datatype} outputs={outputs}"
        run = subprocess.run(
            [kserve_python, os.path.join(HERE, "kserve_client.py"), addr, route,
             os.path.join(models, f"{dataset}-rows.json"), reference.datatype, outputs],
            capture_output=True, text=True, timeout=120,
        )
        if run.returncode != 0:
            failures.append(f"{what}: {run.stderr.strip()[-400:]}")
            continue
        seen = json.loads(run.stdout)
        for transport in ("rest", "grpc"):
            if not (seen[f"{transport}_live"] and seen[f"{transport}_ready"]):
                failures.append(f"{what} {transport}: not live/ready")
            check(f"{what} {transport}", seen[transport], seen[f"{transport}_rows"], reference)


def main():
    addr, models, kserve_python, accept, reject = sys.argv[1:6]
    accept, reject = float(accept), float(reject)
    for route, dataset, datatypes in ROUTES:
        for datatype in datatypes:
            reference = Reference(models, dataset, datatype, accept, reject)
            if "l" not in reference.codes or "s" not in reference.codes:
                failures.append(f"{dataset} {datatype}: the rows are not a mixed batch ({reference.codes})")
            with_requests(addr, route, reference)
            with_triton(addr, route, reference)
            with_kserve(kserve_python, addr, route, reference, models, dataset)
    # A stage 2 that gzips its answers whatever it is asked (a relay in
    # front of MLServer): decoded, never passed off as stage 1.
    with_requests(addr, "cancer-gz", Reference(models, "cancer", "FP64", accept, reject))
    print(json.dumps(summary))
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
