"""Publishing a trained Keras model as a numbered TF Serving version, atomically, with its model card.

Layout (DESIGN §2): ``models/<name>/<version>/`` holding ``saved_model.pb``, ``variables/``,
``assets.extra/model_card.json`` and ``assets.extra/tf_serving_warmup_requests``. Everything is written
under a hidden temporary directory in the same parent, loaded back and checked, and only then renamed
into place: a poller sees either no version or a complete, loadable one.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from segcore.card import ModelCard, Postprocessing, Provenance, ThreadSettings, Tiling, brats_regions
from segcore.model_folder import SIGNATURE_NAME, WARMUP_RELPATH, next_version, publish_atomically
from segcore.runner import SavedModelRunner
from training.config import TrainConfig


def write_warmup_requests(path: Path, card: ModelCard, shapes: list[tuple[int, ...]]) -> None:
    """Write ``PredictionLog`` records (the TFRecord file TF Serving replays at load) with one
    ``PredictRequest`` per shape. Inputs are deterministic noise, which exercises every kernel."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for shape in shapes:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=card.name, signature_name=SIGNATURE_NAME)
            )
            sample = rng.standard_normal(shape).astype(np.float32)
            request.inputs[card.input_name].CopyFrom(tf.make_tensor_proto(sample))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_version(model: keras.Model, card: ModelCard, models_dir: Path) -> Path:
    """Export ``model`` as version ``card.version`` of ``card.name`` and return the final directory.

    Published with :func:`segcore.model_folder.publish_atomically`, after loading the written SavedModel
    back and checking one call on the card's representative input shape. Refuses to overwrite an
    existing version: published versions are immutable.
    """

    def build(tmp: Path) -> None:
        archive = keras.export.ExportArchive()
        archive.track(model)
        spec = tf.TensorSpec([1] + [None] * card.dims + [len(card.modalities)], tf.float32, name=card.input_name)

        def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {card.output_name: model(image, training=False)}

        archive.add_endpoint(name=SIGNATURE_NAME, fn=serve, input_signature=[spec])
        archive.write_out(str(tmp), verbose=False)
        card.write(tmp)
        write_warmup_requests(tmp / WARMUP_RELPATH, card, [card.representative_input_shape])
        # Load back what was written and run it once: never publish a version that cannot serve.
        runner = SavedModelRunner(tmp, card)
        runner.checked_predict(np.zeros(card.representative_input_shape, dtype=np.float32), "the exported model")

    return publish_atomically(Path(models_dir) / card.name / str(card.version), build)


def _per_source(config: TrainConfig, per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean validation Dice per data source (the archive layout ``training.convert`` recorded for each
    case in the shards' ``index.json``): ``mean:<layout>`` (whole tumour) or ``mean:<layout>:<region>``.
    Keys start with ``mean`` so the quality gate, which compares per-case keys, leaves them out. Empty
    when the shards have no index (made by hand)."""
    index = Path(config.data.shards) / "index.json"
    if not index.is_file():
        return {}
    layouts = {c["case_id"]: c["layout"] for c in json.loads(index.read_text()).get("cases", [])}
    out: dict[str, float] = {}
    for layout in sorted({layouts[c] for c in per_case if c in layouts}):
        cases = [per_case[c] for c in per_case if layouts.get(c) == layout]
        for region in cases[0]:
            key = f"mean:{layout}" if list(cases[0]) == ["WT"] else f"mean:{layout}:{region}"
            out[key] = round(float(np.mean([c[region] for c in cases])), 4)
    return out


def model_card(config: TrainConfig, summary: dict, version: int | None = None) -> ModelCard:
    """The card of a trained model: the config's grid, tiling and labels, provenance, and the validation
    Dice of the best epoch (per case, per BraTS region where the model has regions, and their means).
    With a ``calibration`` in the summary (``[calibration] enabled``), the card carries the chosen
    threshold and small-component removal, and the validation Dice *with* them (what serving returns).
    ``version`` defaults to the next free number under ``config.models_dir``."""
    regions = brats_regions(config.labels, config.activation)
    calibration = summary.get("calibration")
    scored = calibration or {
        "val_dice_per_case": summary["val_dice_per_case"],
        "val_dice_per_region": summary["val_dice_per_region"],
        "val_dice": summary["best_val_dice"],
    }
    validation_dice = {
        f"{cid}:{region}" if regions else cid: round(value, 4)
        for cid, per in scored["val_dice_per_case"].items()
        for region, value in per.items()
    }
    validation_dice.update({f"mean:{r}": round(v, 4) for r, v in scored["val_dice_per_region"].items()})
    validation_dice["mean"] = round(scored["val_dice"], 4)
    validation_dice.update(_per_source(config, scored["val_dice_per_case"]))
    postprocessing = Postprocessing(
        min_component_ml=calibration["min_component_ml"] if calibration else 0.0,
        calibrated_on=list(config.data.validation) if calibration else [],
    )
    return ModelCard(
        name=config.name,
        version=version or next_version(Path(config.models_dir) / config.name),
        dims=config.dims,
        modalities=config.modalities,
        orientation=config.orientation,
        spacing_mm=config.spacing_mm,
        tiling=Tiling(
            divisor=config.divisor,
            patch_size=[config.inference_patch] * 3 if config.dims == 3 else None,
            overlap=config.inference.overlap,
            mirror=config.inference.mirror,
        ),
        normalization=config.normalization,
        preprocessing=config.preprocessing,
        labels=config.labels,
        activation=config.activation,
        threshold=calibration["threshold"] if calibration else config.threshold,
        postprocessing=postprocessing,
        provenance=Provenance(
            datasets=config.datasets,
            train_cases=config.data.train,
            validation_cases=config.data.validation,
            licence_notes=config.licence_notes,
        ),
        validation_dice=validation_dice,
        threads=ThreadSettings(intra_op=config.threads.intra_op, inter_op=config.threads.inter_op),
        description=config.description,
    )
