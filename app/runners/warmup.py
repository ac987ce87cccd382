"""A version's warm-up requests (TF Serving's ``assets.extra/tf_serving_warmup_requests``) as numpy batches.

The registry replays them before a version serves; ``SEG_BACKEND=auto`` also times them on every candidate
backend and compares each candidate's answers with TensorFlow's on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcore.card import ModelCard
from segcore.model_folder import WARMUP_RELPATH


def warmup_batches(version_dir: Path, card: ModelCard) -> list[np.ndarray]:
    """The inputs of the version's warm-up requests, float32 ``[1, *spatial, C]`` each, in file order.

    No warm-up file: one zero batch of :attr:`ModelCard.representative_input_shape`, so the first real
    request is still not the slow one. A request without the card's input is a ``ValueError``.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(version_dir) / WARMUP_RELPATH
    batches: list[np.ndarray] = []
    if path.is_file():
        for record in tf.data.TFRecordDataset(str(path)):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            if card.input_name not in request.inputs:
                raise ValueError(f"warm-up request has inputs {sorted(request.inputs)}, not {card.input_name!r}")
            batches.append(tf.make_ndarray(request.inputs[card.input_name]).astype(np.float32))
    if not batches:
        batches.append(np.zeros(card.representative_input_shape, dtype=np.float32))
    return batches
