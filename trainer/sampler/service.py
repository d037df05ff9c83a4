"""``SamplerServicer``: translates ``rlyard.sampler.v1`` to a ``SamplerHost`` and back, and the
sampler service's ``ServiceDefinition`` (what ``rlyard serve sampler`` runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from rlyard.common.v1 import common_pb2
from rlyard.errors import ServiceError, Unavailable, clip
from rlyard.sampler.v1 import sampler_pb2, sampler_pb2_grpc
from rlyard.server import Runtime, ServiceDefinition
from trainer.sampler.convert import generation_to_pb, request_from_pb
from trainer.sampler.serving import SamplerHost
from trainer.sampler.settings import SamplerSettings

logger = logging.getLogger(__name__)

SERVICE_NAME = sampler_pb2.DESCRIPTOR.services_by_name["SamplerService"].full_name


class SamplerServicer(sampler_pb2_grpc.SamplerServiceServicer):
    """The gRPC face of a ``SamplerHost`` (``host()`` gives it, or raises ``Unavailable`` while it loads)."""

    def __init__(self, host: Callable[[], SamplerHost]) -> None:
        self.host = host

    async def Generate(self, request: sampler_pb2.GenerateRequest, context: object) -> sampler_pb2.GenerateResponse:
        return generation_to_pb(await self.host().sample(request_from_pb(request)))

    async def GenerateBatch(self, request: sampler_pb2.GenerateBatchRequest,
                            context: object) -> sampler_pb2.GenerateBatchResponse:
        host = self.host()

        async def one(pb: sampler_pb2.GenerateRequest) -> sampler_pb2.GenerateResult:
            try:   # each request its own answer: one bad request does not fail the others
                return sampler_pb2.GenerateResult(generation=generation_to_pb(await host.sample(request_from_pb(pb))))
            except ServiceError as exc:
                return sampler_pb2.GenerateResult(error=common_pb2.ErrorStatus(code=exc.code.value[0],
                                                                               message=clip(exc.message)))
            except Exception as exc:
                logger.exception("sampler: a request of a GenerateBatch failed")
                return sampler_pb2.GenerateResult(error=common_pb2.ErrorStatus(
                    code=grpc.StatusCode.UNKNOWN.value[0], message=clip(f"the server failed: {type(exc).__name__}")))

        # tasks start in order and reach the batcher before any waits: one tick's requests, in order
        results = await asyncio.gather(*(one(pb) for pb in request.requests))
        return sampler_pb2.GenerateBatchResponse(results=results)

    async def Release(self, request: sampler_pb2.ReleaseRequest, context: object) -> sampler_pb2.ReleaseResponse:
        return sampler_pb2.ReleaseResponse(released=self.host().release(list(request.cache_keys)))

    async def GetInfo(self, request: sampler_pb2.GetInfoRequest, context: object) -> sampler_pb2.GetInfoResponse:
        info = await self.host().info()
        pb = sampler_pb2.GetInfoResponse(
            model=info.model, backend=info.backend, weight_version=info.weight_version,
            weight_publication=info.weight_publication, loaded_versions=list(info.loaded_versions),
            weights_root=info.weights_root, max_model_len=info.max_model_len, vocab_size=info.vocab_size,
            supports_images=info.supports_images, max_batch_size=info.max_batch_size,
        )
        if info.latest_published is not None:
            pb.latest_published = info.latest_published
        return pb


class _Slot:
    """The host once loaded (the servicer answers UNAVAILABLE until then)."""

    def __init__(self, host: SamplerHost | None = None) -> None:
        self.value = host

    def __call__(self) -> SamplerHost:
        if self.value is None:
            raise Unavailable("the sampler is loading its model; retry shortly (health says NOT_SERVING until ready)")
        return self.value


def sampler_service(settings: SamplerSettings, host: SamplerHost | None = None) -> ServiceDefinition:
    """The sampler service: loads the policy and the latest published weights while health says
    NOT_SERVING (warm-up), then serves. ``host``: one already built (tests); else from ``settings``."""
    slot = _Slot()

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        sampler_pb2_grpc.add_SamplerServiceServicer_to_server(SamplerServicer(slot), server)

    async def warm_up() -> None:
        built = host if host is not None else await asyncio.to_thread(build_host, settings)
        await built.start()
        slot.value = built

    async def stop() -> None:
        if slot.value is not None:
            await slot.value.aclose()

    return ServiceDefinition(name="sampler", full_names=[SERVICE_NAME], register=register, warm_up=[warm_up],
                             on_stop=[stop])


def build_host(settings: SamplerSettings) -> SamplerHost:
    """The ``SamplerHost`` that ``settings`` describe (loads the base checkpoint)."""
    import torch

    from trainer.policy.loading import load_policy
    from trainer.sampler.registry import check_backend

    if settings.backend != "hf":
        check_backend(settings.backend)   # refuses what is not installed or not available, saying why
    dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
    policy = load_policy(settings.policy_dir, dtype=dtype, device=settings.device)
    policy.model.eval()
    return SamplerHost(policy, model_name=str(settings.policy_dir), weights_root=settings.weights_root,
                       keep_versions=settings.keep_versions, poll_s=settings.poll_s,
                       max_batch_size=settings.max_batch_size or None, cache_max_tokens=settings.cache_max_tokens,
                       max_model_len=settings.max_model_len)


def from_env() -> ServiceDefinition:
    """The sampler service configured by ``RLYARD_SAMPLER_*`` (what ``rlyard serve sampler`` runs)."""
    return sampler_service(SamplerSettings.from_env("RLYARD_SAMPLER"))
