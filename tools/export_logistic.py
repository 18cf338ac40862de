#!/usr/bin/env python3
"""Export a fitted scikit-learn logistic regression as Cascadia's stage-1 model.

Accepts a `LogisticRegression`, or a `Pipeline` of `StandardScaler` and
`LogisticRegression`, fitted for binary classification. Writes the JSON
artifact a cascade route's `model` points at:

    {"name", "version", "features", "coefficients", "intercept",
     "mean", "scale", "classes"}

The model file may be a joblib file (what MLServer's sklearn runtime
serves as `model.joblib`) or a plain pickle. Anything else (another
estimator, a pipeline with other steps, a multi-class model) is refused
with a message saying what was found.

Usage:
    export_logistic.py --pickle model.joblib --features a,b,c --name fraud-lr --out model.json
    export_logistic.py --breast-cancer OUT_DIR
        trains a Pipeline on scikit-learn's breast-cancer dataset and writes
        OUT_DIR/breast_cancer_model.json plus OUT_DIR/breast_cancer_expected.json
        (inputs and predict_proba), the fixture of Cascadia's parity test.
"""

import argparse
import json
import pickle
import sys


def load_estimator(path):
    """Reads a fitted estimator from a joblib file or a plain pickle."""
    try:
        import joblib

        return joblib.load(path)
    except ImportError:
        pass
    except Exception as joblib_error:  # noqa: BLE001 - fall back to pickle, then report both
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as pickle_error:  # noqa: BLE001
            raise SystemExit(
                f"{path}: neither a joblib file ({joblib_error}) nor a pickle ({pickle_error})"
            ) from None
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except Exception as error:  # noqa: BLE001
            raise SystemExit(f"{path}: not a pickle ({error})") from None


def export_model(estimator, feature_names, name, version="1"):
    """Returns the artifact dict for a fitted estimator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = None
    model = estimator
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
        kinds = " + ".join(type(step).__name__ for step in steps)
        if len(steps) == 2 and isinstance(steps[0], StandardScaler):
            scaler, model = steps
        elif len(steps) == 1:
            model = steps[0]
        else:
            raise SystemExit(
                f"a Pipeline of {kinds}: only StandardScaler + LogisticRegression pipelines are supported"
            )
    if not isinstance(model, LogisticRegression):
        raise SystemExit(f"expected a LogisticRegression, got {type(model).__name__}")
    if model.coef_.shape[0] != 1:
        raise SystemExit("only binary classifiers are supported")
    coefficients = [float(c) for c in model.coef_[0]]
    if len(feature_names) != len(coefficients):
        raise SystemExit(f"{len(feature_names)} feature names for {len(coefficients)} coefficients")

    artifact = {
        "name": name,
        "version": str(version),
        "features": list(feature_names),
        "coefficients": coefficients,
        "intercept": float(model.intercept_[0]),
        "classes": [c.item() if hasattr(c, "item") else c for c in model.classes_],
    }
    if scaler is not None:
        n = len(coefficients)
        # with_mean/with_std=False leave mean_/scale_ unset: identity.
        mean = scaler.mean_ if scaler.with_mean else [0.0] * n
        scale = scaler.scale_ if scaler.with_std else [1.0] * n
        artifact["mean"] = [float(m) for m in mean]
        artifact["scale"] = [float(s) for s in scale]
    return artifact


def breast_cancer_fixture(out_dir):
    """Trains on a real dataset shipped with scikit-learn and writes the
    model and the expected probabilities for every row."""
    import os

    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    features = [name.replace(" ", "_") for name in data.feature_names]
    pipeline = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=5000))])
    pipeline.fit(data.data, data.target)
    artifact = export_model(pipeline, features, "breast-cancer-lr", "1")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "breast_cancer_model.json"), "w") as f:
        json.dump(artifact, f, indent=1)
    expected = {
        "inputs": [[float(x) for x in row] for row in data.data],
        "probabilities": [float(p) for p in pipeline.predict_proba(data.data)[:, 1]],
    }
    with open(os.path.join(out_dir, "breast_cancer_expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"wrote {len(expected['inputs'])} rows to {out_dir}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pickle", help="a fitted estimator: a joblib file (model.joblib) or a plain pickle")
    parser.add_argument("--features", help="comma-separated feature names, in training column order")
    parser.add_argument("--name", default="stage1-lr")
    parser.add_argument("--version", default="1")
    parser.add_argument("--out", help="where to write the JSON artifact")
    parser.add_argument("--breast-cancer", metavar="OUT_DIR", help="write the parity-test fixture")
    args = parser.parse_args()

    if args.breast_cancer:
        breast_cancer_fixture(args.breast_cancer)
        return
    if not (args.pickle and args.features and args.out):
        parser.error("--pickle, --features and --out are required (or --breast-cancer)")
    estimator = load_estimator(args.pickle)
    artifact = export_model(estimator, args.features.split(","), args.name, args.version)
    with open(args.out, "w") as f:
        json.dump(artifact, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
