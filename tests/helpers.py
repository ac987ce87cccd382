"""Test data the tests make themselves: synthetic heads with known geometry, and a real (tiny,
hand-written) SavedModel that marks bright voxels, so geometry can be checked independently of how
well a trained network segments."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard, Postprocessing, Tiling
from segcore.model_folder import CARD_RELPATH, SIGNATURE_NAME, WARMUP_RELPATH, publish_atomically


def synthetic_head(shape_zyx=(40, 72, 64), spacing=(1.0, 1.0, 1.0)) -> tuple[sitk.Image, sitk.Image]:
    """An LPS image of a head (intensity ~100) with an off-centre bright 'tumour' (300), and the tumour
    mask. The tumour sits in the left-anterior-superior quadrant so any flip moves it."""
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    cz, cy, cx = (s / 2 for s in shape_zyx)
    head = ((z - cz) / (0.42 * shape_zyx[0])) ** 2 + ((y - cy) / (0.42 * shape_zyx[1])) ** 2 + (
        (x - cx) / (0.42 * shape_zyx[2])
    ) ** 2 <= 1
    tumour = ((z - 0.62 * shape_zyx[0]) / 5) ** 2 + ((y - 0.35 * shape_zyx[1]) / 7) ** 2 + (
        (x - 0.66 * shape_zyx[2]) / 6
    ) ** 2 <= 1
    rng = np.random.default_rng(3)
    volume = np.where(head, 100 + 5 * rng.standard_normal(head.shape), 0).astype(np.float32)
    volume[tumour & head] = 300
    image = sitk.GetImageFromArray(volume)
    mask = sitk.GetImageFromArray((tumour & head).astype(np.uint8))
    for img in (image, mask):
        img.SetSpacing(spacing)
        img.SetOrigin((-30.0, 12.5, -7.0))
    return image, mask


def make_threshold_model(
    models_dir: Path,
    name: str = "bright",
    version: int = 1,
    divisor: int = 8,
    modality: str = "flair",
    offset: float = 2.0,
    warmup: bool = False,
    validation_dice: dict[str, float] | None = None,
) -> Path:
    """Publish a SavedModel whose ``probabilities`` are sigmoid(8 * (image - offset)): after the brain
    z-score, the bright tumour (z >> 2) is foreground and normal tissue is not. A lower ``offset`` marks
    more voxels, so two versions differing only in ``offset`` give measurably different answers.

    Published as ``training.export`` does (:func:`segcore.model_folder.publish_atomically`), so a polling
    server never sees half a version. ``warmup`` adds TF Serving
    warm-up requests written by the exporter's own writer. ``validation_dice`` goes into the card, as
    ``training.export`` writes it (what the quality gate compares).
    """

    def build(tmp: Path) -> None:
        import tensorflow as tf

        class Threshold(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
            def serve(self, image):
                return {"probabilities": tf.sigmoid(8.0 * (image - offset))}

        module = Threshold()
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        card = ModelCard(
            name=name,
            version=version,
            dims=2,
            modalities=[modality],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=divisor, margin=4),
            labels={1: "bright"},
            validation_dice=validation_dice or {},
        )
        card.write(tmp)
        if warmup:
            from training.export import write_warmup_requests

            write_warmup_requests(tmp / WARMUP_RELPATH, card, [(1, 48, 40, 1), (1, 64, 64, 1)])

    return publish_atomically(Path(models_dir) / name / str(version), build)


FLAWS = ("corrupt_saved_model", "invalid_card", "wrong_signature", "wrong_output_channels")


def make_broken_version(models_dir: Path, name: str, version: int, flaw: str) -> Path:
    """Publish a version that must never be served, broken in one of the ways ``FLAWS`` names:

    - ``corrupt_saved_model``: a good version whose ``saved_model.pb`` was then overwritten with junk
    - ``invalid_card``: a good SavedModel whose card does not validate (a sigmoid with two labels)
    - ``wrong_signature``: the signature takes ``volume`` of rank 5, the (2D) card says ``image`` rank 4
    - ``wrong_output_channels``: loads and runs, but answers 2 channels where the card promises 1
      (caught by warm-up)
    """
    if flaw not in FLAWS:
        raise ValueError(f'flaw must be one of {FLAWS}, not "{flaw}"')
    root = Path(models_dir) / name
    if flaw in ("corrupt_saved_model", "invalid_card"):
        scratch = root / f".scratch-{version}-{uuid.uuid4().hex[:8]}"
        make_threshold_model(scratch, name=name, version=version)

        def build(tmp: Path) -> None:
            shutil.move(str(scratch / name / str(version)), tmp)
            shutil.rmtree(scratch)
            if flaw == "corrupt_saved_model":
                (tmp / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel protobuf \xff\xfe" * 64)
            else:
                card = json.loads((tmp / CARD_RELPATH).read_text())
                card["labels"] = {"1": "core", "2": "oedema"}  # two labels for one sigmoid: invalid
                (tmp / CARD_RELPATH).write_text(json.dumps(card))

        return publish_atomically(root / str(version), build)

    def build_module(tmp: Path) -> None:
        import tensorflow as tf

        if flaw == "wrong_signature":
            spec = tf.TensorSpec([1, None, None, None, 1], tf.float32, name="volume")

            def fn(volume):
                return {"probabilities": tf.sigmoid(volume)}
        else:
            spec = tf.TensorSpec([1, None, None, 1], tf.float32, name="image")

            def fn(image):
                return {"probabilities": tf.concat([tf.sigmoid(image), tf.sigmoid(-image)], axis=-1)}

        module = tf.Module()
        module.serve = tf.function(fn, input_signature=[spec])
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        ModelCard(
            name=name, version=version, dims=2, modalities=["flair"], spacing_mm=[1.0, 1.0, 1.0], labels={1: "bright"}
        ).write(tmp)

    return publish_atomically(root / str(version), build_module)


def make_gated_model(models_dir: Path, gate: Path, poison: Path, name: str = "gated", version: int = 1) -> Path:
    """A SavedModel the test controls from outside the server, through two files:

    - while ``gate`` does not exist, every call waits (polling the filesystem inside the graph), so the
      test can hold the inference slot for as long as it needs and observe the server's state;
    - while ``poison`` exists, every call fails (an ``InvalidArgumentError`` at inference: a 500).

    Otherwise it is the bright-voxel threshold model (sigmoid(8 * (z - 2))). The file checks depend on
    the loop variable and the input, so TensorFlow cannot fold them into constants at load time.
    Warm-up requests are written (48x40 and 64x64 slices), so the gate must be open while it loads.
    """
    gate_path, poison_path = str(gate), str(poison)

    def build(tmp: Path) -> None:
        import tensorflow as tf

        class Gated(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
            def serve(self, image):
                def closed(i):
                    pattern = tf.strings.regex_replace(tf.strings.as_string(i), "^.*$", gate_path)
                    return tf.equal(tf.size(tf.io.matching_files(pattern)), 0)

                waited = tf.while_loop(closed, lambda i: (i + 1,), (tf.shape(image)[0] * 0,))
                pattern = tf.strings.regex_replace(tf.strings.as_string(waited[0]), "^.*$", poison_path)
                # log(1 - 1) = -inf when poisoned: check_numerics raises; 0 otherwise, added to the output
                # so the check is on the data path and cannot be pruned.
                poisoned = tf.cast(tf.size(tf.io.matching_files(pattern)), tf.float32)
                guard = tf.debugging.check_numerics(tf.math.log(1.0 - poisoned), "poisoned by the test")
                return {"probabilities": tf.sigmoid(8.0 * (image - 2.0)) + guard}

        module = Gated()
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        card = ModelCard(
            name=name,
            version=version,
            dims=2,
            modalities=["flair"],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=8, margin=4),
            labels={1: "bright"},
        )
        card.write(tmp)
        from training.export import write_warmup_requests

        write_warmup_requests(tmp / WARMUP_RELPATH, card, [(1, 48, 40, 1), (1, 64, 64, 1)])

    return publish_atomically(Path(models_dir) / name / str(version), build)


def make_known_probability_model(
    models_dir: Path,
    name: str,
    threshold: float,
    bright: float = 0.4,
    dim: float = 0.02,
    version: int = 1,
    min_component_ml: float | None = None,
) -> Path:
    """A SavedModel with a known probability map: ``bright`` where the brain z-score exceeds 2 (the
    synthetic tumour), ``dim`` elsewhere; its card says ``threshold``. With ``bright`` below 0.5 and a
    card threshold under it, only a pipeline that honours the card's threshold marks the tumour.
    ``min_component_ml`` None writes a card without ``postprocessing`` (as cards before calibration were);
    a number writes ``postprocessing.min_component_ml``."""

    def build(tmp: Path) -> None:
        import tensorflow as tf

        class Known(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
            def serve(self, image):
                return {"probabilities": tf.where(image > 2.0, bright, dim)}

        module = Known()
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        ModelCard(
            name=name,
            version=version,
            dims=2,
            modalities=["flair"],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=8, margin=4),
            labels={1: "bright"},
            threshold=threshold,
            postprocessing=Postprocessing(min_component_ml=min_component_ml or 0.0),
        ).write(tmp)
        if min_component_ml is None:  # a card as written before the field existed
            path = tmp / CARD_RELPATH
            card = json.loads(path.read_text())
            del card["postprocessing"]
            path.write_text(json.dumps(card))

    return publish_atomically(Path(models_dir) / name / str(version), build)
