"""Publishing a trained Keras model as a numbered TF Serving version, atomically.

Layout (DESIGN §2): ``models/<name>/<version>/`` holding ``saved_model.pb``, ``variables/``,
``assets.extra/model_card.json`` and ``assets.extra/tf_serving_warmup_requests``. Everything is written
under a hidden temporary directory in the same parent, loaded back and checked, and only then renamed
into place: a poller sees either no version or a complete, loadable one.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from segcore.card import ModelCard
from segcore.model_folder import SIGNATURE_NAME, WARMUP_RELPATH, publish_atomically
from segcore.runner import SavedModelRunner


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
