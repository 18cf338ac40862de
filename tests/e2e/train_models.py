#!/usr/bin/env python3
"""Trains the end-to-end test models and lays them out for MLServer.

Writes into OUT_DIR:
  models/cancer-lr/   a StandardScaler + LogisticRegression pipeline (stage-1 reference)
  models/cancer-gbc/  a GradientBoostingClassifier (the heavy stage 2)
  stage1.json         the same logistic regression exported for Cascadia
Both are fitted on scikit-learn's breast-cancer dataset; MLServer serves them
with mlserver-sklearn, and the Rust test compares Cascadia's answers with
MLServer's own.
"""

import json
import os
import sys

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from export_logistic import export_model  # noqa: E402


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


def main(out_dir):
    data = load_breast_cancer()
    lr = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=5000))])
    lr.fit(data.data, data.target)
    gbc = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(data.data, data.target)
    save(lr, out_dir, "cancer-lr")
    save(gbc, out_dir, "cancer-gbc")
    features = [f"f{i}" for i in range(data.data.shape[1])]
    with open(os.path.join(out_dir, "stage1.json"), "w") as f:
        json.dump(export_model(lr, features, "cancer-lr", "v1"), f)
    with open(os.path.join(out_dir, "rows.json"), "w") as f:
        json.dump([[float(x) for x in row] for row in data.data[:120]], f)
    print(f"models written to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
