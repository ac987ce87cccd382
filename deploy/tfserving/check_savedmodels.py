"""Do our SavedModels load and run in the TensorFlow release that a TF Serving image is built on?

TF Serving ``X.Y.Z`` links TensorFlow ``X.Y.Z``: its op registry and its SavedModel loader are that
release's. A model exported by a newer TensorFlow may use an op, or an attribute of an op, that the
older release does not know, and TF Serving then refuses to load it ("Op type not registered", "NodeDef
mentions attr ... not in Op"). This script runs under ``tensorflow-cpu==X.Y.Z`` (a separate venv:
scripts/install_tfserving_check.sh) and does what TF Serving does with every version directory given:

1. lists every op of the MetaGraph (graph nodes and function bodies) and checks each is registered, and
   that every attribute a node sets is one its op defines (the usual break across releases);
2. loads the SavedModel with the graph-mode loader (tag ``serve``: TF Serving's SavedModelBundle) and
   runs the ``serving_default`` signature once, on a zero input of the card's shape (2D: one 64 x 64
   slice; 3D: one patch), checking the output shape and that it holds probabilities.

It imports nothing from this project (the venv has only TensorFlow) and prints one JSON report; exit
status 0 only if every model passed.
    python deploy/tfserving/check_savedmodels.py models/*/[0-9]*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry


def _ops_and_attr_errors(meta_graph) -> tuple[set[str], list[str]]:
    nodes = list(meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
        nodes.extend(function.node_def)
    ops, errors = set(), []
    for node in nodes:
        ops.add(node.op)
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue  # reported as missing
        known = {a.name for a in op_def.attr}
        unknown = sorted(a for a in node.attr if not a.startswith("_") and a not in known)
        if unknown:
            errors.append(f"{node.op} sets attributes {unknown} that TensorFlow {tf.__version__} does not define")
    return ops, sorted(set(errors))


def check(version_dir: Path) -> dict:
    card = json.loads((version_dir / "assets.extra" / "model_card.json").read_text())
    channels = len(card["modalities"])
    spatial = card["tiling"]["patch_size"] if card["dims"] == 3 else [64, 64]
    report: dict = {"model": f"{card['name']}/{card['version']}", "ok": False}
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        try:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
        except Exception as exc:  # what TF Serving would log, then refuse the version
            ops: set[str] = set()
            report["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            return report
        ops, attr_errors = _ops_and_attr_errors(meta)
        report["ops"] = len(ops)
        report["missing_ops"] = sorted(op for op in ops if op_def_registry.get(op) is None)
        report["attr_errors"] = attr_errors
        signature = meta.signature_def["serving_default"]
        feed = np.zeros([1, *spatial, channels], dtype=np.float32)
        out = session.run(
            signature.outputs[card["output_name"]].name, {signature.inputs[card["input_name"]].name: feed}
        )
    channels_out = 1 if card["activation"] == "sigmoid" else len(card["labels"]) + 1
    report["output_shape"] = list(out.shape)
    report["ok"] = (
        not report["missing_ops"]
        and not attr_errors
        and list(out.shape) == [1, *spatial, channels_out]
        and bool(np.all((out >= 0) & (out <= 1)))
    )
    return report


def main(argv: list[str]) -> int:
    reports = [check(Path(p)) for p in argv]
    print(json.dumps({"tensorflow": tf.__version__, "models": reports}, indent=2))
    return 0 if reports and all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
