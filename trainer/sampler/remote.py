"""The remote backend: a ``Sampler`` over the sampler service (``rlyard serve sampler``).

``SamplerClient`` is the typed client (deadlines, UNAVAILABLE retried, statuses as
``ServiceError``s). ``RemoteSampler`` implements the ``Sampler`` contract on it: the requests made
in one event-loop tick travel in one ``GenerateBatch`` message, in order, so the service batches
them as the local sampler would (the same seeds give the same tokens); ``release`` frees a
trajectory's keys and values on the service; ``sync_weights`` publishes the weights under the
shared weights root (``trainer.sampler.weights``) and, with ``sync="wait"`` (the default), waits
until the service reports that publication, so the next rollout samples with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
import torch

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES, RetryPolicy, _BaseClient
from rlyard.domain import ImagePart
from rlyard.errors import DeadlineExceeded, ServiceError
from rlyard.sampler.v1 import sampler_pb2, sampler_pb2_grpc
from rlyard.tls import ClientTLS
from trainer.policy.base import Generation, ImageTokenizer
from trainer.sampler.base import SampleRequest, SamplerInfo
from trainer.sampler.convert import generation_from_pb, request_to_pb, service_error
from trainer.sampler.weights import META_FILE, publish_weights

logger = logging.getLogger(__name__)

SyncMode = Literal["wait", "publish"]


class SamplerClient(_BaseClient):
    """Client of ``rlyard.sampler.v1.SamplerService``; failures raise ``ServiceError``s (a pinned
    version the service no longer holds: ``WeightVersionUnavailable``)."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = sampler_pb2_grpc.SamplerServiceStub(self.channel)

    async def __aenter__(self) -> SamplerClient:
        return self

    async def _call(self, fn: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await self._unary(fn, request, timeout)
        except grpc.aio.AioRpcError as exc:
            raise service_error(exc.code(), exc.details() or "") from None

    async def generate(self, request: SampleRequest, timeout: float | None = None) -> Generation:
        """One continuation."""
        return generation_from_pb(await self._call(self.stub.Generate, request_to_pb(request), timeout))

    async def generate_batch(self, requests: Sequence[SampleRequest],
                             timeout: float | None = None) -> list[Generation | ServiceError]:
        """Continuations of ``requests`` sampled as one tick's requests, in order; each is a
        ``Generation`` or the ``ServiceError`` of that request."""
        pb = sampler_pb2.GenerateBatchRequest(requests=[request_to_pb(r) for r in requests])
        resp = await self._call(self.stub.GenerateBatch, pb, timeout)
        if len(resp.results) != len(requests):
            raise service_error(grpc.StatusCode.INTERNAL, f"{len(resp.results)} answers to {len(requests)} requests")
        return [service_error(r.error.code, r.error.message) if r.error.code else generation_from_pb(r.generation)
                for r in resp.results]

    async def release(self, cache_keys: Sequence[str], timeout: float | None = None) -> int:
        """Free what the service keeps for ``cache_keys``; how many held something."""
        resp = await self._call(self.stub.Release, sampler_pb2.ReleaseRequest(cache_keys=list(cache_keys)), timeout)
        return int(resp.released)

    async def info(self, timeout: float | None = None) -> SamplerInfo:
        """The model, versions and limits of the service."""
        r = await self._call(self.stub.GetInfo, sampler_pb2.GetInfoRequest(), timeout)
        return SamplerInfo(
            model=r.model, backend=r.backend, weight_version=r.weight_version,
            weight_publication=r.weight_publication, loaded_versions=tuple(r.loaded_versions),
            latest_published=r.latest_published if r.HasField("latest_published") else None,
            weights_root=r.weights_root, max_model_len=r.max_model_len, vocab_size=r.vocab_size,
            supports_images=r.supports_images, max_batch_size=r.max_batch_size,
        )


class RemoteSampler:
    """A ``Sampler`` (and ``PrefixCaching``) over the sampler service at ``target``.

    ``weights_root``: the directory this process publishes to and the service reads (None: this
    sampler cannot sync weights). ``sync``: "wait" for the service to serve a published version
    (up to ``sync_timeout_s``), or "publish" only (the service loads it within its poll interval;
    until then answers carry the old version). ``image_tokenizer``: the policy's, for a
    vision-language model (the engine asks it how many tokens an image takes). ``batch``: send
    a tick's requests as one ``GenerateBatch`` (False: one ``Generate`` each). ``timeout_s``: the
    deadline of one call; ``retry_window_s``: how long UNAVAILABLE is retried (a restart).
    ``keep_published``: published versions kept on disk (the highest; None: all). ``auth_token``
    and ``tls``: the bearer token and TLS of the channel (``ClientSettings.token_for(target)`` and
    ``channel_tls()``; None: plaintext).
    """

    def __init__(self, target: str, *, weights_root: str | Path | None = None, auth_token: str | None = None,
                 sync: SyncMode = "wait", sync_timeout_s: float = 300.0, timeout_s: float = 300.0,
                 retry_window_s: float = 30.0, batch: bool = True,
                 image_tokenizer: ImageTokenizer | None = None, keep_published: int | None = 4,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTLS | None = None) -> None:
        if sync not in ("wait", "publish"):
            raise ValueError(f"sync={sync!r}: use 'wait' or 'publish'")
        self._target = target
        self._client_options: dict[str, Any] = {"timeout": timeout_s, "retry": RetryPolicy.within(retry_window_s),
                                                "auth_token": auth_token, "tls": tls,
                                                "max_message_bytes": max_message_bytes}
        self._client: SamplerClient | None = None
        self.max_message_bytes = max_message_bytes
        self.weights_root = None if weights_root is None else Path(weights_root)
        self.sync = sync
        self.keep_published = keep_published
        self.sync_timeout_s = sync_timeout_s
        self.batch = batch
        self.image_tokenizer = image_tokenizer
        self._version = 0
        self._outbox: list[tuple[SampleRequest, asyncio.Future[Generation]]] = []
        self._released: list[str] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0          # messages sent (GenerateBatch or Generate)
        self.rows = 0           # requests sent

    @property
    def target(self) -> str:
        """Where the service listens."""
        return self._target

    @property
    def client(self) -> SamplerClient:
        """The client, made on first use: a grpc.aio channel belongs to the event loop that makes it
        (the sampler is built on the trainer's thread and used on the rollout loop)."""
        if self._client is None:
            self._client = SamplerClient(self._target, **self._client_options)
        return self._client

    @property
    def weight_version(self) -> int:
        """The version last synced, or last answered to a request that pinned none."""
        return self._version

    @property
    def supports_images(self) -> bool:
        """Whether requests may carry images (given the policy's image tokenizer)."""
        return self.image_tokenizer is not None and bool(getattr(self.image_tokenizer, "supports_images", True))

    def _vision(self) -> ImageTokenizer:
        if self.image_tokenizer is None:
            raise TypeError("this remote sampler was given no image tokenizer: it takes no images")
        return self.image_tokenizer

    @property
    def image_placeholder(self) -> str:
        """The policy's text for one image (``ImageTokenizer``)."""
        return self._vision().image_placeholder

    @property
    def image_pad_id(self) -> int:
        """The policy's image pad token."""
        return self._vision().image_pad_id

    def image_tokens(self, image: ImagePart) -> int:
        """The pad tokens ``image`` becomes."""
        return self._vision().image_tokens(image)

    # ------------------------------------------------------------------ sampling
    async def sample(self, request: SampleRequest) -> Generation:
        """One continuation; the requests of one tick travel together."""
        if request.images and not self.supports_images:
            raise ValueError(f"this remote sampler takes no images; the request carries {len(request.images)}")
        if not self.batch:
            self.calls += 1
            self.rows += 1
            gen = await self.client.generate(request)
            if request.weight_version is None:
                self._version = gen.weight_version
            return gen
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._outbox.append((request, future))
        self._schedule()
        return await future

    def release(self, cache_key: str) -> None:
        """Free the service's keys and values of ``cache_key`` (sent with the tick's other releases)."""
        self._released.append(cache_key)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        if self._outbox:
            items, self._outbox = self._outbox, []
            for group in _split(items, self.max_message_bytes):
                self._spawn(loop, self._send(group))
        if self._released:
            keys, self._released = self._released, []
            self._spawn(loop, self._release(keys))

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[tuple[SampleRequest, asyncio.Future[Generation]]]) -> None:
        self.calls += 1
        self.rows += len(items)
        try:
            results: list[Generation | ServiceError] = list(await self.client.generate_batch([r for r, _ in items]))
        except ServiceError as exc:
            results = [exc] * len(items)
        except Exception as exc:  # a bug: every waiting request sees it
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (request, future), result in zip(items, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ServiceError):
                future.set_exception(result)
            else:
                if request.weight_version is None:   # a pinned answer says nothing of what is current
                    self._version = result.weight_version
                future.set_result(result)

    async def _release(self, keys: list[str]) -> None:
        try:
            await self.client.release(keys, timeout=10.0)
        except ServiceError as exc:   # the keys age out of the service's cache anyway
            logger.warning("sampler: releasing %d cache keys failed: %s", len(keys), exc)

    # ------------------------------------------------------------------ weights
    async def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Publish ``model``'s weights as ``version`` under ``weights_root``; with ``sync="wait"``,
        return once the service serves them.

        Raises:
            RuntimeError: no ``weights_root``.
            DeadlineExceeded: the service did not load them within ``sync_timeout_s``.
        """
        if self.weights_root is None:
            raise RuntimeError(f"RemoteSampler({self.target}) has no weights_root to publish to; give it the "
                               "directory the sampler service reads (RLYARD_SAMPLER_WEIGHTS_ROOT)")
        path = await asyncio.to_thread(publish_weights, model, self.weights_root, version, keep=self.keep_published)
        self._version = int(version)
        if self.sync == "publish":
            return
        publication = _publication(path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sync_timeout_s
        while True:
            info = await self.client.info()
            if (info.weight_version, info.weight_publication) == (version, publication):
                return
            if loop.time() > deadline:
                raise DeadlineExceeded(f"the sampler service at {self.target} still serves version "
                                       f"{info.weight_version} {self.sync_timeout_s:.0f}s after version {version} was "
                                       f"published under {self.weights_root}: does it read that directory "
                                       f"(its weights root: {info.weights_root or 'none'})?")
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        """Wait for the calls in flight, then close the channel."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None


def _publication(path: Path) -> str:
    return str(json.loads((path / META_FILE).read_text())["publication"])


def _split(items: list[tuple[SampleRequest, asyncio.Future[Generation]]],
           limit: int) -> list[list[tuple[SampleRequest, asyncio.Future[Generation]]]]:
    """``items`` in order, as consecutive groups whose ``GenerateBatchRequest`` stays under ``limit``
    bytes (sizes bounded from above: 5 bytes per token id, the images' bytes, 1 KB for the rest)."""
    groups: list[list[tuple[SampleRequest, asyncio.Future[Generation]]]] = []
    size = limit + 1
    for item in items:
        request = item[0]
        n = 5 * len(request.prompt_ids) + sum(len(i.data) + 256 for i in request.images) + 1024
        if size + n > limit and (not groups or groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += n
    return groups
