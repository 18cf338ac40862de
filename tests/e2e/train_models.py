#!/usr/bin/env python3
"""Trains the end-to-end test models and lays them out for MLServer.

Two real datasets shipped inside scikit-learn, each with a cheap stage 1
and a heavy stage 2:
  cancer   breast cancer (30 float features, FP64)
  digits   8x8 digits as "is it a 3, 5 or 8" (64 integer pixels, INT64)

Writes into OUT_DIR:
  models/{D}-lr/    a StandardScaler + LogisticRegression pipeline, as a user saves it
  models/{D}-gbc/   a GradientBoostingClassifier (the heavy stage 2)
  {D}-stage1.json   the logistic regression exported for Cascadia by
                    tools/export_logistic.py, from MLServer's own model.joblib,
                    with the drift reference of the rows it was trained on
  {D}-rows.json     the rows the tests send
  digits-all.json   every digits row (INT64 pixels) with both stages'
                    positive-class probabilities, {"rows", "lr", "gbc"}: the
                    calibration test records one half through the gateway and
                    counts the other half's recall drop against stage 2
  stage1.json, rows.json   the cancer ones again, for the routing and drill tests
MLServer serves the models with mlserver-sklearn; the tests compare
Cascadia's answers with scikit-learn's predict_proba.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")


def save(model, out_dir, name):
    path = os.path.join(out_dir, "models", name)
    os.makedirs(path, exist_ok=True)
    joblib.dump(model, os.path.join(path, "model.joblib"))
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    with open(os.path.join(path, "model-settings.json"), "w") as f:
        json.dump(settings, f)
    return os.path.join(path, "model.joblib")


def datasets():
    cancer = load_breast_cancer()
    digits = load_digits()
    # A binary task with a real band of doubt for a linear model.
    digits_target = np.isin(digits.target, [3, 5, 8]).astype(int)
    return {
        "cancer": (cancer.data, cancer.target),
        "digits": (digits.data.astype(np.int64), digits_target),
    }


def check_export_tool(lr, features, reference_npy, out_dir, name):
    """The export reads a plain pickle like a joblib file, and refuses a
    model it cannot export, saying what it found. The pickle gets the same
    training data as the joblib export, so the two artifacts must match
    whole, reference included."""
    export = os.path.join(TOOLS, "export_logistic.py")
    pickled = os.path.join(out_dir, f"{name}-lr.pkl")
    with open(pickled, "wb") as f:
        pickle.dump(lr, f)
    from_pickle = os.path.join(out_dir, f"{name}-stage1-from-pickle.json")
    subprocess.run([sys.executable, export, "--pickle", pickled, "--features", features,
                    "--name", f"{name}-lr", "--version", "v1", "--reference-npy", reference_npy,
                    "--out", from_pickle], check=True)
    with open(from_pickle) as a, open(os.path.join(out_dir, f"{name}-stage1.json")) as b:
        assert json.load(a) == json.load(b), "pickle and joblib exports differ"
    refused = subprocess.run(
        [sys.executable, export, "--pickle", os.path.join(out_dir, "models", f"{name}-gbc", "model.joblib"),
         "--features", features, "--out", os.path.join(out_dir, "refused.json")],
        capture_output=True, text=True,
    )
    assert refused.returncode != 0 and "GradientBoostingClassifier" in refused.stderr, refused.stderr


def main(out_dir):
    with tempfile.TemporaryDirectory() as scratch:
        write_models(out_dir, scratch)
    shutil.copy(os.path.join(out_dir, "cancer-stage1.json"), os.path.join(out_dir, "stage1.json"))
    shutil.copy(os.path.join(out_dir, "cancer-rows.json"), os.path.join(out_dir, "rows.json"))
    print(f"models written to {out_dir}")


def write_models(out_dir, scratch):
    """Trains and exports both datasets' models; `scratch` holds the
    training arrays handed to the export tool."""
    for name, (x, y) in datasets().items():
        lr = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=5000, C=0.05))])
        lr.fit(x, y)
        gbc = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(x, y)
        lr_path = save(lr, out_dir, f"{name}-lr")
        save(gbc, out_dir, f"{name}-gbc")
        features = ",".join(f"f{i}" for i in range(x.shape[1]))
        # The reference is the data the LR was fitted on, columns in feature
        # order: what the gateway's drift (PSI) compares live traffic with.
        reference_npy = os.path.join(scratch, f"{name}-train.npy")
        np.save(reference_npy, x)
        # The export reads the very file MLServer serves, as a user would.
        subprocess.run(
            [sys.executable, os.path.join(TOOLS, "export_logistic.py"), "--pickle", lr_path,
             "--features", features, "--name", f"{name}-lr", "--version", "v1",
             "--reference-npy", reference_npy, "--out", os.path.join(out_dir, f"{name}-stage1.json")],
            check=True,
        )
        check_export_tool(lr, features, reference_npy, out_dir, name)
        # Rows spread over the whole dataset, so both stages answer some.
        picked = x[:: max(1, len(x) // 150)][:150]
        rows = [[v.item() for v in row] for row in picked]
        with open(os.path.join(out_dir, f"{name}-rows.json"), "w") as f:
            json.dump(rows, f)
        if name == "digits":
            # The whole dataset, not the 150 rows above: a band certified at
            # 90% confidence needs hundreds of recorded rows, and the test
            # judges the band on rows it was not calibrated on.
            everything = {
                "rows": [[v.item() for v in row] for row in x],
                "lr": lr.predict_proba(x)[:, 1].tolist(),
                "gbc": gbc.predict_proba(x)[:, 1].tolist(),
            }
            with open(os.path.join(out_dir, "digits-all.json"), "w") as f:
                json.dump(everything, f)


if __name__ == "__main__":
    main(sys.argv[1])
