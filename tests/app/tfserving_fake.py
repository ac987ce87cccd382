"""A stand-in for TensorFlow Serving: the real ``PredictionService`` gRPC service from the
``tensorflow-serving-api`` protos, running real SavedModels in this process.

There is no ``tensorflow_model_server`` binary on this machine. This servicer answers ``Predict`` the way
TF Serving does for the calls the app makes: ``NOT_FOUND`` for a servable it has not loaded, the exact
version named in the ``ModelSpec`` (echoed back in the response), ``INVALID_ARGUMENT`` for an input the
signature does not take. It decodes and encodes tensors with TensorFlow's own ``make_ndarray`` /
``make_tensor_proto``, not with the app's codec, so the two sides are checked against each other.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from segcore.model_folder import SIGNATURE_NAME
from segcore.runner import SavedModelRunner

MESSAGE_LIMIT = 64 * 2**20


@dataclass(frozen=True)
class Call:
    name: str
    version: int
    signature: str
    shape: tuple[int, ...]


class FakeTFServing(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Serves ``models_dir/<name>/<version>/`` once :attr:`loaded` is set (TF Serving loads versions on
    its own schedule); while :attr:`stalled` is set, ``Predict`` hangs until :attr:`released` is set (or
    30 s), which is how a deadline is exceeded; while :attr:`error` is set, ``Predict`` fails with that status."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.loaded = threading.Event()
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.error: grpc.StatusCode | None = None  # set: every Predict fails with this status
        self.calls: list[Call] = []
        self._runners: dict[tuple[str, int], SavedModelRunner] = {}
        self._lock = threading.Lock()

    def _runner(self, name: str, version: int) -> SavedModelRunner | None:
        with self._lock:
            if (name, version) not in self._runners:
                path = self.models_dir / name / str(version)
                if not (path / "saved_model.pb").is_file():
                    return None
                self._runners[(name, version)] = SavedModelRunner(path)
            return self._runners[(name, version)]

    def Predict(  # gRPC's method name
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        import tensorflow as tf

        spec = request.model_spec
        if not spec.HasField("version"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the app must always name the version")
        version = spec.version.value
        runner = self._runner(spec.name, version) if self.loaded.is_set() else None
        if runner is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, {version})"
            )
        if spec.signature_name not in ("", SIGNATURE_NAME):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: {spec.signature_name} not found")
        if runner.card.input_name not in request.inputs:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {', '.join(request.inputs)}",
            )
        if self.error is not None:
            context.abort(self.error, "failure injected by the test")
        if self.stalled.is_set():
            self.released.wait(timeout=30)
        batch = tf.make_ndarray(request.inputs[runner.card.input_name])
        self.calls.append(Call(spec.name, version, spec.signature_name, tuple(batch.shape)))
        out = runner.predict(batch)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(spec)
        response.outputs[runner.card.output_name].CopyFrom(tf.make_tensor_proto(out))
        return response


def serve(servicer: FakeTFServing) -> tuple[grpc.Server, int]:
    """Start ``servicer`` on a free loopback port; returns the server and the port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
