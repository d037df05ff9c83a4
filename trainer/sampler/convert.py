"""``rlyard.sampler.v1`` messages to the sampler contract's records and back (both sides: the
servicer and ``RemoteSampler``), and gRPC status codes to ``ServiceError``s."""

from __future__ import annotations

import grpc

from rlyard import errors
from rlyard.domain.convert import image_from_pb, image_to_pb
from rlyard.errors import InvalidArgument, ServiceError
from rlyard.sampler.v1 import sampler_pb2
from trainer.policy.base import Generation, SamplingParams
from trainer.sampler.base import SampleRequest, WeightVersionUnavailable

_FINISH = {"stop": sampler_pb2.FINISH_REASON_STOP, "length": sampler_pb2.FINISH_REASON_LENGTH}


def params_to_pb(params: SamplingParams) -> sampler_pb2.SamplingParams:
    """``SamplingParams`` as a message (a negative seed cannot travel: ``ValueError``)."""
    if params.seed is not None and params.seed < 0:
        raise ValueError(f"seed={params.seed}: the sampler service takes seeds >= 0")
    pb = sampler_pb2.SamplingParams(
        max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
        stop_token_ids=list(params.stop_token_ids), stop_strings=list(params.stop_strings),
    )
    if params.seed is not None:
        pb.seed = params.seed
    return pb


def params_from_pb(pb: sampler_pb2.SamplingParams) -> SamplingParams:
    """``SamplingParams`` from a message; INVALID_ARGUMENT saying which value is wrong."""
    try:
        return SamplingParams(
            max_new_tokens=pb.max_new_tokens, temperature=pb.temperature,
            top_p=pb.top_p if pb.HasField("top_p") else 1.0,
            stop_token_ids=tuple(pb.stop_token_ids), stop_strings=tuple(pb.stop_strings),
            seed=pb.seed if pb.HasField("seed") else None,
        )
    except ValueError as exc:
        raise InvalidArgument(f"params: {exc}") from None


def request_to_pb(request: SampleRequest) -> sampler_pb2.GenerateRequest:
    """A ``GenerateRequest`` from a ``SampleRequest``."""
    pb = sampler_pb2.GenerateRequest(
        prompt_ids=list(request.prompt_ids), images=[image_to_pb(i) for i in request.images],
        params=params_to_pb(request.params), cache_key=request.cache_key or "",
    )
    if request.weight_version is not None:
        pb.weight_version = request.weight_version
    return pb


def request_from_pb(pb: sampler_pb2.GenerateRequest) -> SampleRequest:
    """A ``SampleRequest`` from a ``GenerateRequest``; INVALID_ARGUMENT for bad params or images."""
    return SampleRequest(
        prompt_ids=list(pb.prompt_ids), params=params_from_pb(pb.params),
        images=tuple(image_from_pb(i) for i in pb.images), cache_key=pb.cache_key or None,
        weight_version=pb.weight_version if pb.HasField("weight_version") else None,
    )


def generation_to_pb(gen: Generation) -> sampler_pb2.GenerateResponse:
    """A ``GenerateResponse`` from a ``Generation``."""
    pb = sampler_pb2.GenerateResponse(
        token_ids=gen.token_ids, logprobs=gen.logprobs, raw_logprobs=gen.raw_logprobs,
        finish_reason=_FINISH[gen.finish_reason], weight_version=gen.weight_version,
    )
    if isinstance(gen.stop_reason, str):
        pb.stop_string = gen.stop_reason
    elif gen.stop_reason is not None:
        pb.stop_token_id = int(gen.stop_reason)
    return pb


def generation_from_pb(pb: sampler_pb2.GenerateResponse) -> Generation:
    """A ``Generation`` from a ``GenerateResponse``."""
    kind = pb.WhichOneof("stop_reason")
    stop: int | str | None = pb.stop_string if kind == "stop_string" else pb.stop_token_id if kind else None
    return Generation(
        token_ids=list(pb.token_ids), logprobs=list(pb.logprobs), raw_logprobs=list(pb.raw_logprobs),
        finish_reason="stop" if pb.finish_reason == sampler_pb2.FINISH_REASON_STOP else "length",
        stop_reason=stop, weight_version=pb.weight_version,
    )


_ERRORS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: WeightVersionUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def service_error(code: grpc.StatusCode | int, message: str) -> ServiceError:
    """The ``ServiceError`` of a status the sampler service answered (FAILED_PRECONDITION: a pinned
    weight version it no longer holds)."""
    status = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN) if isinstance(code, int) else code
    cls = _ERRORS.get(status)
    if cls is not None:
        return cls(f"sampler service: {message}")
    exc = ServiceError(f"sampler service: {status.name}: {message}")
    exc.code = status
    return exc
