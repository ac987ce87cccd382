"""TensorFlow Serving as the inference backend (``SEG_BACKEND=tfserving``).

The service still does everything but the network: it reads the model card from the shared models
directory, prepares the volume and tiles it with ``segcore``, and sends each tile (batch size 1) to TF
Serving's ``PredictionService/Predict`` over gRPC, naming the exact model version in the ``ModelSpec``, so a
request is computed by the version it reports in ``X-Model-Version``. The runner has the same interface
as :class:`segcore.runner.SavedModelRunner` (``card``, ``predict(batch) -> ndarray``), so the pipeline
does not know which backend it runs on.

gRPC failures become HTTP answers (JSON via :class:`app.errors.ApiError`):

============================  ======  ====================================================
gRPC status                   HTTP    meaning
============================  ======  ====================================================
``DEADLINE_EXCEEDED``         504     no answer within ``SEG_TFSERVING_TIMEOUT_SECONDS``
``UNAVAILABLE``               503     TF Serving is not reachable (down, restarting)
``RESOURCE_EXHAUSTED``        503     TF Serving refused the call (overloaded, message limit)
``NOT_FOUND``                 503     TF Serving has not loaded that version (yet)
anything else                 502     TF Serving answered with an error
============================  ======  ====================================================

The 503/504 kinds are *retryable* (:class:`TFServingUnavailable`, a
:class:`segcore.runner.RetryableLoadError`): while the registry loads a version through this backend they
mean "ask again on the next poll" (TF Serving polls the same directory on its own schedule), not "this
version is broken".
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from app.errors import ApiError
from segcore.card import ModelCard
from segcore.model_folder import SIGNATURE_NAME
from segcore.runner import RetryableLoadError, Runner

log = logging.getLogger("app.runners.tfserving")

# gRPC status -> (HTTP status, error code, retryable)
_ERRORS: dict[grpc.StatusCode, tuple[int, str, bool]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "tfserving_timeout", True),
    grpc.StatusCode.UNAVAILABLE: (503, "tfserving_unavailable", True),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "tfserving_busy", True),
    grpc.StatusCode.NOT_FOUND: (503, "tfserving_model_unavailable", True),
}


class TFServingError(ApiError):
    """A failed Predict call, already mapped to the HTTP answer the client gets; it says something about
    the version (``retryable`` False). :class:`TFServingUnavailable` is the kind that does not."""

    retryable = False

    def __init__(self, status: int, code: str, detail: str, *, grpc_code: str) -> None:
        super().__init__(status, code, detail, headers={"Retry-After": "5"} if status == 503 else None)
        self.grpc_code = grpc_code


class TFServingUnavailable(TFServingError, RetryableLoadError):
    """A failure that says something only about TF Serving's state right now (not reachable, busy, the
    version not loaded yet): the registry retries the version on its next refresh."""

    retryable = True


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A float32 array as a ``TensorProto`` with raw little-endian ``tensor_content`` (no per-value
    encoding: a 240x240 slice is one memcpy, not 57,600 repeated floats)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]
        ),
        tensor_content=array.tobytes(),
    )


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The float32 array in ``proto`` (``tensor_content`` or ``float_val``, as TF Serving may send either)."""
    if proto.dtype != types_pb2.DT_FLOAT:
        raise ValueError(f"expected a float32 tensor, got dtype {types_pb2.DataType.Name(proto.dtype)}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype="<f4")
    else:
        values = np.asarray(proto.float_val, dtype=np.float32)
        if values.size == 1 and size > 1:  # TensorProto convention: a single value fills the tensor
            values = np.full(size, values[0], dtype=np.float32)
    if values.size != size:
        raise ValueError(f"tensor of shape {shape} carries {values.size} values")
    return values.reshape(shape).astype(np.float32, copy=True)


class TFServingClient:
    """One gRPC channel to TF Serving, shared by every model version's runner.

    A channel multiplexes concurrent calls over one HTTP/2 connection and reconnects by itself; one per
    request would pay a handshake each time. Calling the client builds a runner, so it is the registry's
    ``RunnerFactory`` for this backend.
    """

    def __init__(self, target: str, *, timeout_seconds: float = 30.0, max_message_mb: int = 256) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, not {timeout_seconds}")
        limit = int(max_message_mb * 2**20)
        self.target = target
        self.timeout_seconds = timeout_seconds
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def __call__(self, version_dir: Path, card: ModelCard) -> TFServingRunner:
        return TFServingRunner(self, card)

    def close(self) -> None:
        self.channel.close()

    def error(self, exc: grpc.RpcError, card: ModelCard) -> TFServingError:
        """Map a failed call to the HTTP answer (see the module docstring)."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        status, error_code, retryable = _ERRORS.get(code, (502, "tfserving_error", False))
        what = f"model {card.name} version {card.version}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"TF Serving at {self.target} did not answer within {self.timeout_seconds:g} s for {what}"
        elif code == grpc.StatusCode.UNAVAILABLE:
            detail = f"TF Serving at {self.target} is not reachable ({details.strip()[:200]}); retry shortly"
        else:
            detail = f"TF Serving at {self.target} answered {code.name} for {what}: {details.strip()[:300]}"
        log.warning("tfserving_error grpc=%s http=%s model=%s version=%s", code.name, status, card.name, card.version)
        kind = TFServingUnavailable if retryable else TFServingError
        return kind(status, error_code, detail, grpc_code=code.name)


class TFServingRunner(Runner):
    """One model version served by TF Serving; what the pipeline calls once per tile."""

    def __init__(self, client: TFServingClient, card: ModelCard) -> None:
        self.card = card
        self._client = client

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` float32 ``[1, *spatial, C]`` -> float32 ``[1, *spatial, K]`` probabilities."""
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=self.card.name, signature_name=SIGNATURE_NAME),
            output_filter=[self.card.output_name],
        )
        request.model_spec.version.value = self.card.version
        request.inputs[self.card.input_name].CopyFrom(to_tensor_proto(batch))
        try:
            response = self._client.stub.Predict(request, timeout=self._client.timeout_seconds)
        except grpc.RpcError as exc:
            raise self._client.error(exc, self.card) from None
        answered = response.model_spec.version.value if response.model_spec.HasField("version") else None
        if answered is not None and answered != self.card.version:  # the header must name who computed it
            raise TFServingError(
                502,
                "tfserving_error",
                f"asked TF Serving for {self.card.name} v{self.card.version}, v{answered} answered",
                grpc_code="OK",
            )
        if self.card.output_name not in response.outputs:
            raise TFServingError(
                502,
                "tfserving_error",
                f"TF Serving returned outputs {sorted(response.outputs)}, not {self.card.output_name!r}",
                grpc_code="OK",
            )
        return from_tensor_proto(response.outputs[self.card.output_name])
