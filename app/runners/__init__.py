"""Inference backends: how a model version's network is run (in process, OpenVINO, TF Serving over gRPC).
:mod:`app.runners.backends` is the table of them."""
