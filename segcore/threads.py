"""Thread settings must be in place before TensorFlow creates its pools (at first import/use)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def apply_thread_env(
    intra_op: int | None = None,
    inter_op: int | None = None,
    omp_num_threads: int | None = None,
    kmp_blocktime: int | None = None,
    onednn: bool | None = None,
) -> None:
    """Set OMP/KMP/oneDNN environment variables, then TensorFlow's pool sizes.

    Call before any TensorFlow op runs. The environment part only takes effect if TensorFlow has not
    been imported yet, which is why CLIs call this first thing.
    """
    if omp_num_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(omp_num_threads)
    if kmp_blocktime is not None:
        os.environ["KMP_BLOCKTIME"] = str(kmp_blocktime)
    if onednn is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn else "0"
    import tensorflow as tf

    threading = tf.config.threading
    for wanted, getter, setter in (
        (intra_op, threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads),
        (inter_op, threading.get_inter_op_parallelism_threads, threading.set_inter_op_parallelism_threads),
    ):
        if wanted is None or getter() == wanted:
            continue
        try:
            setter(wanted)
        except RuntimeError:  # TensorFlow already ran an op in this process: its pools are fixed
            log.warning("thread setting %s=%s ignored: TensorFlow is already initialized", setter.__name__, wanted)
