"""Publishing a trained Keras model as a numbered TF Serving version, atomically.

Layout (DESIGN §2): ``models/<name>/<version>/`` holding ``saved_model.pb``, ``variables/``,
``assets.extra/model_card.json`` and ``assets.extra/tf_serving_warmup_requests``. Everything is written
under a hidden temporary directory in the same parent, loaded back and checked, and only then renamed
into place: a poller sees either no version or a complete, loadable one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from segcore.card import WARMUP_RELPATH, ModelCard
from segcore.runner import SavedModelRunner


def next_version(model_root: Path) -> int:
    """One more than the highest numbered version directory under ``model_root`` (1 if none)."""
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def write_warmup_requests(path: Path, card: ModelCard, shapes: list[tuple[int, ...]]) -> None:
    """Write ``PredictionLog`` records (the TFRecord file TF Serving replays at load) with one
    ``PredictRequest`` per shape. Inputs are deterministic noise, which exercises every kernel."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for shape in shapes:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=card.name, signature_name="serving_default")
            )
            sample = rng.standard_normal(shape).astype(np.float32)
            request.inputs[card.input_name].CopyFrom(tf.make_tensor_proto(sample))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def warmup_shapes(card: ModelCard) -> list[tuple[int, ...]]:
    """Representative batch-of-one input shapes for warm-up: a typical brain-cropped slice (2D) or
    the card's patch (3D: the sliding window only ever sends that shape)."""
    if card.dims == 3:
        return [(1, *card.tiling.patch_size, len(card.modalities))]  # type: ignore[misc]
    divisor = card.tiling.divisor
    return [(1, -(-176 // divisor) * divisor, -(-144 // divisor) * divisor, len(card.modalities))]


def export_version(model: keras.Model, card: ModelCard, models_dir: Path) -> Path:
    """Export ``model`` as version ``card.version`` of ``card.name`` and return the final directory.

    Refuses to overwrite an existing version: published versions are immutable.
    """
    model_root = Path(models_dir) / card.name
    model_root.mkdir(parents=True, exist_ok=True)
    final = model_root / str(card.version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; published versions are immutable")
    tmp = model_root / f".tmp-{card.version}-{uuid.uuid4().hex[:8]}"
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        spec = tf.TensorSpec([1] + [None] * card.dims + [len(card.modalities)], tf.float32, name=card.input_name)

        def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {card.output_name: model(image, training=False)}

        archive.add_endpoint(name="serving_default", fn=serve, input_signature=[spec])
        archive.write_out(str(tmp), verbose=False)
        card.write(tmp)
        write_warmup_requests(tmp / WARMUP_RELPATH, card, warmup_shapes(card))
        # Load back what was written and run it once: never publish a version that cannot serve.
        runner = SavedModelRunner(tmp, card)
        shape = warmup_shapes(card)[0]
        out = runner.predict(np.zeros(shape, dtype=np.float32))
        if out.shape != (*shape[:-1], card.output_channels):
            raise ValueError(f"exported model returns {out.shape} for input {shape}")
        del runner
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
