"""Training: BraTS-style folders -> shards -> 2D U-Net -> a published model version.

Never imports ``app``; agrees with serving only through ``segcore``.
"""
