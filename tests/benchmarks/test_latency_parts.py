"""The pieces the latency benchmark's numbers rest on: the naive variant really runs the served weights,
and the FLOP count is right (checked against a hand count)."""

from __future__ import annotations

import numpy as np

from benchmarks.latency import conv_flops, rebuild_keras
from segcore.card import ModelCard
from segcore.runner import SavedModelRunner
from tests.conftest import bundled_version_dir


def test_rebuilt_keras_model_computes_what_the_savedmodel_serves():
    version_dir = bundled_version_dir()
    card = ModelCard.load(version_dir)
    model = rebuild_keras(version_dir, card)
    batch = np.random.default_rng(2).standard_normal((1, 96, 80, 1)).astype(np.float32)
    served = SavedModelRunner(version_dir, card).predict(batch)
    np.testing.assert_allclose(model.predict(batch, verbose=0), served, atol=1e-5)


def test_conv_flops_matches_a_hand_count():
    from training.unet import build_unet

    model = build_unet(2, 1, 1, depth=1, base_filters=2, normalization="none")
    # 16x16 input: down 3x3 1->2, 2->2 at 16x16; bottom 2->4, 4->4 at 8x8; 2x2 stride-2 transpose 4->2 from 8x8;
    # up 3x3 4->2, 2->2 at 16x16; 1x1 2->1. Two FLOPs per multiply-add.
    by_hand = 2 * (
        256 * 9 * 1 * 2
        + 256 * 9 * 2 * 2
        + 64 * 9 * 2 * 4
        + 64 * 9 * 4 * 4
        + 64 * 4 * 4 * 2
        + 256 * 9 * 4 * 2
        + 256 * 9 * 2 * 2
        + 256 * 2 * 1
    )
    assert conv_flops(model, (16, 16)) == by_hand
