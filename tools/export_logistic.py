#!/usr/bin/env python3
"""Export a fitted scikit-learn logistic regression as Cascadia's stage-1 model.

Accepts a `LogisticRegression`, or a `Pipeline` of `StandardScaler` and
`LogisticRegression`, fitted for binary classification. Writes the JSON
artifact a cascade route's `model` points at:

    {"name", "version", "features", "coefficients", "intercept",
     "mean", "scale", "classes", "reference"}

"reference" is optional and written only when training features are given
(--reference-csv or --reference-npy, or by --breast-cancer). It is what the
gateway measures drift (PSI) against, per feature in the model's order:

    "reference": {"rows": N, "edges": [[...], ...], "shares": [[...], ...]}

  edges[f]   interior bin edges: the training column's deciles (quantiles
             0.1 .. 0.9, numpy's default linear method), duplicates removed,
             ascending, all finite
  shares[f]  the share of the N training rows in each bin, len(edges[f]) + 1
             entries summing to 1 (to rounding)

A value x falls in bin `numpy.searchsorted(edges[f], x, side="right")`, the
number of edges <= x; the gateway bins live traffic by the same rule, so
the shares here are computed with it too. `reference_of(x)` builds the
object from other scripts.

The model file may be a joblib file (what MLServer's sklearn runtime
serves as `model.joblib`) or a plain pickle. Anything else (another
estimator, a pipeline with other steps, a multi-class model) is refused
with a message saying what was found.

Usage:
    export_logistic.py --pickle model.joblib --features a,b,c --name fraud-lr --out model.json
        [--reference-csv train.csv | --reference-npy train.npy]
        the CSV has a header naming the features (columns are matched by
        name, others ignored); the .npy is a 2-D array with its columns in
        --features order
    export_logistic.py --breast-cancer OUT_DIR
        trains a Pipeline on scikit-learn's breast-cancer dataset and writes
        OUT_DIR/breast_cancer_model.json (with the training data's reference)
        plus OUT_DIR/breast_cancer_expected.json (inputs and predict_proba),
        the fixture of Cascadia's parity test.
"""

import argparse
import json
import pickle
import sys

# Deciles: ten bins are enough for PSI to see a shifted feature, and each
# still holds a tenth of the training rows, so its share is not noise.
# Written as q / 10 so each is the correctly rounded 0.1, 0.2, ...
REFERENCE_QUANTILES = [q / 10 for q in range(1, 10)]


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


def reference_of(x):
    """Returns the artifact's "reference" for training features `x` (2-D,
    rows by features, columns in the model's feature order): per feature
    the deciles as bin edges and the share of rows in each bin."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise SystemExit(f"reference data must be a non-empty 2-D array, got shape {x.shape}")
    # One NaN would make every quantile of its column NaN, and the gateway
    # refuses non-finite edges: say where it is instead.
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, column = bad[0]
        raise SystemExit(f"reference data: row {row}, column {column} is {x[row, column]}, not a finite number")
    edges, shares = [], []
    for column, values in enumerate(x.T):
        # A column with few distinct values (a pixel that is mostly 0) has
        # repeated deciles; a repeated edge would only add an empty bin.
        cut = np.unique(np.quantile(values, REFERENCE_QUANTILES))
        if not np.isfinite(cut).all():
            # Finite values near ±1.8e308 can still interpolate to inf.
            raise SystemExit(f"reference data: column {column}'s deciles overflow")
        # The gateway's bin rule, applied to the same rows.
        counts = np.bincount(np.searchsorted(cut, values, side="right"), minlength=len(cut) + 1)
        edges.append([float(e) for e in cut])
        shares.append([int(c) / len(values) for c in counts])
    return {"rows": int(x.shape[0]), "edges": edges, "shares": shares}


def read_reference_csv(path, feature_names):
    """Reads training features from a CSV whose header names them; other
    columns (a label, an id) are ignored. Returns rows in feature order."""
    import csv

    import numpy as np

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [column.strip() for column in next(reader, [])]
        missing = [n for n in feature_names if n not in header]
        if missing:
            raise SystemExit(f"{path}: the header has no column for {', '.join(missing)}")
        repeated = [n for n in feature_names if header.count(n) > 1]
        if repeated:
            raise SystemExit(f"{path}: the header names {', '.join(repeated)} more than once")
        columns = [header.index(n) for n in feature_names]
        rows = []
        for record in reader:
            if not record:
                continue  # a blank line, such as a trailing one
            if len(record) != len(header):
                raise SystemExit(f"{path}:{reader.line_num}: {len(record)} fields, the header has {len(header)}")
            try:
                rows.append([float(record[c]) for c in columns])
            except ValueError as error:
                raise SystemExit(f"{path}:{reader.line_num}: {error}") from None
    return np.array(rows, dtype=np.float64).reshape(-1, len(feature_names))


def read_reference_npy(path, feature_names):
    """Reads training features from a 2-D .npy array, columns in feature
    order."""
    import numpy as np

    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise SystemExit(f"{path}: expected a 2-D array with {len(feature_names)} columns, got shape {x.shape}")
    return x


def export_model(estimator, feature_names, name, version="1", reference=None):
    """Returns the artifact dict for a fitted estimator; `reference` (from
    `reference_of`) is added when given."""
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
    if reference is not None:
        if len(reference["edges"]) != len(coefficients):
            raise SystemExit(f"the reference has {len(reference['edges'])} features, the model {len(coefficients)}")
        artifact["reference"] = reference
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
    artifact = export_model(pipeline, features, "breast-cancer-lr", "1", reference=reference_of(data.data))
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
    training = parser.add_mutually_exclusive_group()
    training.add_argument("--reference-csv", metavar="PATH",
                          help="training features as CSV, header naming them: adds the drift reference")
    training.add_argument("--reference-npy", metavar="PATH",
                          help="training features as a 2-D .npy, columns in --features order: adds the drift reference")
    parser.add_argument("--breast-cancer", metavar="OUT_DIR", help="write the parity-test fixture")
    args = parser.parse_args()

    if args.breast_cancer:
        if args.reference_csv or args.reference_npy:
            parser.error("--breast-cancer writes the reference of its own training data")
        breast_cancer_fixture(args.breast_cancer)
        return
    if not (args.pickle and args.features and args.out):
        parser.error("--pickle, --features and --out are required (or --breast-cancer)")
    features = args.features.split(",")
    reference = None
    if args.reference_csv:
        reference = reference_of(read_reference_csv(args.reference_csv, features))
    elif args.reference_npy:
        reference = reference_of(read_reference_npy(args.reference_npy, features))
    estimator = load_estimator(args.pickle)
    artifact = export_model(estimator, features, args.name, args.version, reference=reference)
    with open(args.out, "w") as f:
        json.dump(artifact, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
