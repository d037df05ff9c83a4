"""The rollout engine: token in, token out; every trajectory runs its own async loop.

One trajectory (``RolloutEngine.rollout``):

1. The prompt ids come from ``tokenizer.apply_chat_template(task.messages, tools=task.tools,
   add_generation_prompt=True)``, once per task. A tool session is opened with ``task.context``
   while the first turn generates (so first turns batch together); the first tool call waits for it.
2. Each turn generates until the end of the turn (``<|im_end|>`` / eos) or the per-turn limit.
   We stop at the end of the turn, not at ``</tool_call>``: Qwen's format puts all the calls of a
   turn before ``<|im_end|>``, so one generation holds all of them and they run concurrently.
   The generated ids (loss mask 1, with their sampling log-probs; regions from ``label_regions``
   on the turn's ids) are appended as they came; the policy's text is never re-tokenized.
3. The turn is parsed (``parse_tool_calls``). Its rules, in order:
   an ``<answer>`` → COMPLETED with that answer (calls in the same turn are not run);
   no call and no malformed call → the end: COMPLETED with the turn's text as the answer
   (FORMAT_ERROR instead when ``require_answer``), TRUNCATED when the turn was cut by the
   per-turn token limit; the last allowed turn (``max_turns``) with calls → TRUNCATED, the calls
   are not run (no turn would read their results). Otherwise the calls run concurrently over the
   engine's ``ToolStream`` (deadline ``tool_timeout_s``, a global semaphore ``tool_concurrency``
   and one per tool name ``per_tool_concurrency``; the client retries UNAVAILABLE). With
   ``max_calls_per_tool_per_turn`` = n > 0 (LocalSearchBench: one call per tool per round), only
   the first n calls of each tool name in the turn run; each later one is refused: not run, not
   counted in ``num_tool_calls``, answered by an ``Error: …`` line in its place. The turn's record
   keeps every call the model made; only the calls that ran have a result.
4. A failure of the system — ``Unavailable``/``DeadlineExceeded`` from the stream, a result with
   ``system_error.code != 0``, a failed ``OpenSession`` when a tool is to be called — ends the
   trajectory as INFRA_FAILED with ``infra_error`` saying what; it never raises out of ``run``.
5. The observation — each call's result text (or its refusal) in the order of the calls, then one
   ``Error: …`` per malformed call, wrapped by ``format_observation`` in ``<tool_response>``
   markers and capped to ``max_observation_tokens`` tokens (the chat wrapper around it is not
   counted) — is put inside the template's tool turn
   (``ToolTurnTemplate``: the rest of the assistant turn's end, e.g. ``"\\n"`` after a generated
   ``<|im_end|>`` or all of ``"<|im_end|>\\n"`` after a cut turn, then e.g.
   ``"<|im_start|>user\\n"`` … ``"<|im_end|>\\n<|im_start|>assistant\\n"``). Only these strings are
   tokenized; they get loss mask 0, log-prob 0 and region OBSERVATION.
6. ``max_total_tokens`` bounds prompt + everything after it: a turn may generate at most what is
   left, and an observation that would leave no room for another token ends the trajectory as
   TRUNCATED (not appended). The session is closed at the end, also on failure.

KV cache (``kv_cache``, default on): every request of a trajectory carries its id as
``cache_key``, and the trajectory releases it when it ends, so a sampler that keeps keys and values
(``PrefixCaching``: the local one) runs only a turn's new tokens — the last sampled token, the
observation and the template around it — and the group's identical first prompts once. The
samples are the same as without, to float rounding.

Images: a tool result's images stay in the trajectory's record (the reward service reads them).
A text-only policy reads a placeholder in the observation (``[image photo: 8x6 image/png, …]``).
A sampler that ``supports_images`` (an ``ImageTokenizer``: a vision-language policy) reads them as
image tokens: the prompt's image parts (``{"type": "image", "image_id": …}`` naming one of the task's
``attachments``) and each tool result's images become the policy's placeholder in the rendered text,
whose one pad token is expanded to the image's run of ``image_tokens(image)`` pads; a pad that a
tool's text spells out is removed first. The trajectory is then ``vision`` and its ``images`` are
exactly the images whose runs its tokens hold, in order (an image whose placeholder the observation
cap cut off is not among them); every request carries them, and so does the training batch.

Weight versions: every turn after the first asks the sampler for the weight version of the
first (``SampleRequest.weight_version``), so a trajectory is sampled by one version, recorded in
``weight_versions`` and the record's metadata. A sampler that no longer holds it, or a sampler
service that fails (``ServiceError``), ends the trajectory as INFRA_FAILED ("sampler: ...").

Reproducibility: each generation's seed is ``derive_seed(seed, step, group, sample, turn)``; the
local sampler seeds a batched ``generate`` call from its rows' seeds in order. The same run is
reproduced when the same rows meet in the same batches, which depends on the completion order of
tool calls; with ``max_batch_size=1`` every trajectory is reproducible on its own whatever the
order (given the same weights and device), at the cost of batching.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from rlyard.client import ToolClient, ToolStream
from rlyard.domain import ImagePart, JsonPart, Task, TextPart, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.errors import ServiceError
from trainer.config import RolloutConfig
from trainer.parsing import ParsedCall, Region, format_observation, label_regions, parse_tool_calls
from trainer.policy.base import Generation, ImageTokenizer, SamplingParams
from trainer.rollout.template import ToolTurnTemplate
from trainer.sampler import PrefixCaching, Sampler, SampleRequest, derive_seed
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass
class _CallOutcome:
    """One tool call as the engine saw it."""

    call: ParsedCall
    call_id: str
    result: ToolResult | None = None
    latency_ms: float = 0.0
    infra_error: str = ""

    @property
    def text(self) -> str:
        """What a text policy reads: the result's content, images as placeholders."""
        return "" if self.result is None else self.result.observation

    def vision_text(self, placeholder: str, pad_text: str) -> str:
        """What a vision policy reads: the content with each image as ``placeholder``, and any
        ``pad_text`` the tool wrote removed (it would stand for an image that is not there)."""
        if self.result is None:
            return ""
        out: list[str] = []
        for part in self.result.content:
            if isinstance(part, TextPart):
                out.append(part.text.replace(pad_text, ""))
            elif isinstance(part, JsonPart):
                out.append(part.dumps().replace(pad_text, ""))
            elif isinstance(part, ImagePart):
                out.append(placeholder)
        return "\n".join(out)

    def record(self) -> ToolResult:
        """The result as the trajectory keeps it (an empty one when the call never answered)."""
        if self.result is None:
            return ToolResult(call_id=self.call_id, name=self.call.name)
        return self.result.answering(self.call_id, self.call.name, self.latency_ms)


@dataclass
class _State:
    """What one trajectory accumulates besides the token lists."""

    trajectory_id: str
    turns: list[Turn] = field(default_factory=list)

    def add(self, role: str, text: str, **kwargs: Any) -> None:
        self.turns.append(Turn(index=len(self.turns), role=role, text=text, **kwargs))


def chat_prompt_ids(tokenizer: Any, task: Task) -> list[int]:
    """``task``'s chat-template prompt as token ids, before a vision policy's image pads are expanded."""
    rendered = tokenizer.apply_chat_template(
        task.messages, tools=task.tools or None, add_generation_prompt=True, tokenize=True
    )
    if not isinstance(rendered, list):  # a BatchEncoding (transformers >= 5 returns a dict)
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


class RolloutEngine:
    """Samples trajectories of tool-using episodes; see the module docstring for the rules.

    ``sampler`` is any ``Sampler`` (the caller owns it and closes it); ``tool_client`` a
    ``ToolClient`` made on the event loop the engine runs on. Extra knobs: ``tool_timeout_s``
    (deadline of one tool call and of session open/close), ``require_answer`` (a final turn
    without ``<answer>`` is FORMAT_ERROR), ``session_idle_timeout_s``.
    """

    def __init__(
        self,
        sampler: Sampler,
        tokenizer: Any,
        tool_client: ToolClient,
        config: RolloutConfig,
        *,
        seed: int = 0,
        tool_timeout_s: float = 30.0,
        require_answer: bool = False,
        session_idle_timeout_s: float = 0.0,
    ) -> None:
        if tool_timeout_s <= 0:
            raise ValueError(f"tool_timeout_s={tool_timeout_s}: must be > 0 seconds")
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.tool_client = tool_client
        self.config = config
        self.seed = seed
        self.tool_timeout_s = tool_timeout_s
        self.require_answer = require_answer
        self.session_idle_timeout_s = session_idle_timeout_s
        self.template = ToolTurnTemplate.from_tokenizer(tokenizer)
        self.stop_token_ids = _stop_token_ids(tokenizer)
        self._global_limit = asyncio.Semaphore(config.tool_concurrency)
        self._tool_limits: dict[str, asyncio.Semaphore] = {}
        self._stream: ToolStream | None = None
        self._stream_loop: asyncio.AbstractEventLoop | None = None
        self._prompt_cache: dict[int, tuple[list[int], tuple[ImagePart, ...]]] = {}
        self.vision: ImageTokenizer | None = None
        if sampler.supports_images:
            if not isinstance(sampler, ImageTokenizer):
                raise TypeError(f"{type(sampler).__name__} supports images but is no ImageTokenizer: the engine "
                                "cannot tell how many tokens an image takes")
            self.vision = sampler
            self._pad_text = self._decode([sampler.image_pad_id])

    # ------------------------------------------------------------------ public
    async def run(
        self, tasks: Sequence[Task], group_size: int | None = None, *, step: int = 0
    ) -> list[RolloutTrajectory]:
        """Sample every task ``group_size`` times (default: the config's); ``group_id`` is the
        task's index. Returned group by group, samples in order."""
        size = self.config.group_size if group_size is None else group_size
        if size < 1:
            raise ValueError(f"group_size={size}: must be >= 1")
        return await self.run_groups([[task] * size for task in tasks], step=step)

    async def run_groups(self, groups: Sequence[Sequence[Task]], *, step: int = 0) -> list[RolloutTrajectory]:
        """One trajectory per entry: ``groups[g][s]`` is the task sample ``s`` of group ``g`` starts
        from (the samples of a group may differ in their prompt, e.g. the half that the graph memory
        prompts). Returned group by group, samples in order."""
        self._prompt_cache.clear()
        async with asyncio.TaskGroup() as tg:
            jobs = [
                tg.create_task(self.rollout(task, group_id, sample, step=step))
                for group_id, samples in enumerate(groups)
                for sample, task in enumerate(samples)
            ]
        return [job.result() for job in jobs]

    async def rollout(self, task: Task, group_id: int, sample_index: int, *, step: int = 0) -> RolloutTrajectory:
        """One trajectory of ``task``; never raises for a failure of the tool service."""
        prompt_ids, images = self._prompt(task)
        traj = RolloutTrajectory(task=task, group_id=group_id, sample_index=sample_index, prompt_ids=list(prompt_ids),
                                 images=list(images), vision=self.vision is not None)
        state = _State(trajectory_id=f"{task.task_id}/step{step}/g{group_id}/s{sample_index}")
        for message in task.messages:
            content = message.get("content")
            if isinstance(content, list):     # parts: the text, and the images the prompt shows
                text = "".join(str(p.get("text", "")) for p in content
                               if isinstance(p, dict) and p.get("type") == "text")
                state.add(str(message.get("role", "user")), text, content=tuple(_message_images(task, [message])))
            else:
                state.add(str(message.get("role", "user")), str(content or ""))
        # The session opens while the first turn generates: the first generations of a batch
        # then meet in one ``generate`` call instead of trickling in as sessions open.
        session = asyncio.create_task(self._open_session(task))
        try:
            await self._turns(traj, state, session, step)
        finally:
            if self.config.kv_cache and isinstance(self.sampler, PrefixCaching):
                self.sampler.release(state.trajectory_id)
            session_id, _ = await session  # bounded by tool_timeout_s; closed below even if unused
            if session_id:
                await self._close_session(session_id)
            traj.record = Trajectory(
                trajectory_id=state.trajectory_id,
                task_id=task.task_id,
                turns=tuple(state.turns),
                final_answer=traj.final_answer,
                status=traj.status,
                infra_error=traj.infra_error,
                metadata={"group_id": str(group_id), "sample_index": str(sample_index), "step": str(step),
                          "weight_versions": ",".join(str(v) for v in sorted(traj.weight_versions))},
            )
        traj.check_aligned()
        return traj

    def prompt_ids(self, task: Task) -> list[int]:
        """The tokenized chat-template prompt of ``task`` (cached for the current run); a vision
        policy's with each image's pad run expanded."""
        return list(self._prompt(task)[0])

    def _prompt(self, task: Task) -> tuple[list[int], tuple[ImagePart, ...]]:
        """The prompt's ids and, for a vision policy, the images they show, in order."""
        cached = self._prompt_cache.get(id(task))
        if cached is None:
            ids = chat_prompt_ids(self.tokenizer, task)
            images: tuple[ImagePart, ...] = ()
            if self.vision is not None:
                images = tuple(_message_images(task, task.messages))
                ids, shown = self._expand_images(ids, images)
                if len(shown) != len(images):
                    raise ValueError(f"task {task.task_id}: the chat template rendered {len(shown)} image "
                                     f"placeholder(s) for {len(images)} image part(s); it must render each "
                                     f"image part as {self.vision.image_placeholder!r}")
            cached = (ids, images)
            self._prompt_cache[id(task)] = cached
        return list(cached[0]), cached[1]

    def _expand_images(self, ids: list[int], images: Sequence[ImagePart]) -> tuple[list[int], list[ImagePart]]:
        """``ids`` with the k-th image pad token replaced by the k-th image's pad run, and the images
        that had a pad (a cut observation may have lost some)."""
        assert self.vision is not None
        pad = self.vision.image_pad_id
        out: list[int] = []
        shown: list[ImagePart] = []
        for token in ids:
            if token != pad:
                out.append(token)
                continue
            if len(shown) == len(images):
                raise ValueError(f"an image pad token with no image left to show ({len(images)} given)")
            image = images[len(shown)]
            out.extend([pad] * self.vision.image_tokens(image))
            shown.append(image)
        return out, shown

    async def aclose(self) -> None:
        """Close the tool stream (not the tool client, not the sampler)."""
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    # ------------------------------------------------------------------ the loop
    async def _turns(
        self, traj: RolloutTrajectory, state: _State, session: asyncio.Task[tuple[str, str]], step: int
    ) -> None:
        cfg = self.config
        for turn in range(cfg.max_turns):
            room = cfg.max_total_tokens - len(traj.prompt_ids) - len(traj.token_ids)
            if room <= 0:
                traj.status = TrajectoryStatus.TRUNCATED
                return
            params = SamplingParams(
                max_new_tokens=min(cfg.max_new_tokens_per_turn, room),
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                stop_token_ids=self.stop_token_ids,
                seed=derive_seed(self.seed, step, traj.group_id, traj.sample_index, turn),
            )
            images = tuple(traj.images) if self.sampler.supports_images else ()
            key = state.trajectory_id if cfg.kv_cache else None
            # later turns pin the version of the first: a trajectory never mixes two versions
            pinned = next(iter(traj.weight_versions)) if traj.weight_versions else None
            request = SampleRequest(traj.prompt_ids + traj.token_ids, params, images, key, pinned)
            try:
                gen = await self.sampler.sample(request)
            except ServiceError as exc:   # a sampler service failed, or dropped the pinned version
                _fail(traj, f"sampler: {type(exc).__name__}: {exc}")
                return
            self._append_generated(traj, gen)
            ended = bool(gen.token_ids) and gen.token_ids[-1] in self.stop_token_ids
            text = self._decode(gen.token_ids[:-1] if ended else gen.token_ids)
            parsed = parse_tool_calls(text)

            if parsed.answer is not None:
                state.add("assistant", text)
                traj.status, traj.final_answer = TrajectoryStatus.COMPLETED, parsed.answer
                return
            if not parsed.calls and not parsed.errors:
                state.add("assistant", text)
                if not ended:
                    traj.status = TrajectoryStatus.TRUNCATED
                elif self.require_answer:
                    traj.status = TrajectoryStatus.FORMAT_ERROR
                else:
                    traj.status, traj.final_answer = TrajectoryStatus.COMPLETED, text.strip()
                return
            call_ids = [f"{state.trajectory_id}/t{turn}/c{i}" for i in range(len(parsed.calls))]
            calls = tuple(
                ToolCall(call_id=cid, name=c.name, arguments_json=json.dumps(c.arguments))
                for cid, c in zip(call_ids, parsed.calls, strict=True)
            )
            state.add("assistant", text, tool_calls=calls)
            if turn + 1 == cfg.max_turns:
                traj.status = TrajectoryStatus.TRUNCATED
                return

            session_id, error = await session
            if error:
                _fail(traj, error)
                return
            allowed, refusals = _apply_call_limit(parsed.calls, cfg.max_calls_per_tool_per_turn)
            outcomes = await self._call_tools(
                session_id, [parsed.calls[i] for i in allowed], [call_ids[i] for i in allowed]
            )
            traj.num_tool_calls += len(outcomes)
            traj.tool_latency_ms.extend(o.latency_ms for o in outcomes)
            failed = [o.infra_error for o in outcomes if o.infra_error]
            if failed:
                _fail(traj, "; ".join(failed))
                state.add("tool", "", tool_results=tuple(o.record() for o in outcomes))
                return

            if self.vision is not None:
                texts_of = [o.vision_text(self.vision.image_placeholder, self._pad_text) for o in outcomes]
            else:
                texts_of = [o.text for o in outcomes]
            results = dict(zip(allowed, texts_of, strict=True))
            texts = [results[i] if i in results else f"Error: {refusals[i]}" for i in range(len(parsed.calls))]
            texts += [f"Error: {e}" for e in parsed.errors]
            observation = format_observation(texts, self.tokenizer, cfg.max_observation_tokens)
            head = self._assistant_rest(gen, ended) + self.template.tool_prefix
            obs_ids = self._encode(head) + self._encode(observation) + self._encode(self.template.tool_suffix)
            result_images = [image for o in outcomes if o.result is not None for image in o.result.images]
            if self.vision is not None:
                obs_ids, result_images = self._expand_images(obs_ids, result_images)
            if len(traj.prompt_ids) + len(traj.token_ids) + len(obs_ids) >= cfg.max_total_tokens:
                traj.status = TrajectoryStatus.TRUNCATED
                return
            traj.token_ids.extend(obs_ids)
            traj.loss_mask.extend([0] * len(obs_ids))
            traj.old_logprobs.extend([0.0] * len(obs_ids))
            traj.regions.extend([int(Region.OBSERVATION)] * len(obs_ids))
            traj.images.extend(result_images)
            state.add("tool", observation, tool_results=tuple(o.record() for o in outcomes))
        traj.status = TrajectoryStatus.TRUNCATED  # not reached: the last turn returns above

    def _append_generated(self, traj: RolloutTrajectory, gen: Generation) -> None:
        if len(gen.logprobs) != len(gen.token_ids):
            raise RuntimeError(f"the sampler gave {len(gen.logprobs)} log-probs for {len(gen.token_ids)} tokens")
        traj.token_ids.extend(gen.token_ids)
        traj.weight_versions.add(gen.weight_version)
        traj.loss_mask.extend([1] * len(gen.token_ids))
        traj.old_logprobs.extend(float(lp) for lp in gen.logprobs)
        traj.regions.extend(label_regions(gen.token_ids, self.tokenizer) if gen.token_ids else [])

    def _assistant_rest(self, gen: Generation, ended: bool) -> str:
        """What the template puts after the assistant content that the policy did not generate."""
        end = self.template.assistant_end
        if ended:
            stop_text = self._decode(gen.token_ids[-1:])
            if end.startswith(stop_text):
                return end[len(stop_text):]
        return end

    # ------------------------------------------------------------------ tools
    def _stream_for_loop(self) -> ToolStream:
        loop = asyncio.get_running_loop()
        if self._stream is None or self._stream_loop is not loop:
            self._stream, self._stream_loop = self.tool_client.stream(batch=True), loop
        return self._stream

    async def _call_tools(
        self, session_id: str, calls: list[ParsedCall], call_ids: list[str]
    ) -> list[_CallOutcome]:
        async with asyncio.TaskGroup() as tg:
            jobs = [tg.create_task(self._call_tool(session_id, c, cid)) for c, cid in zip(calls, call_ids, strict=True)]
        return [job.result() for job in jobs]

    async def _call_tool(self, session_id: str, call: ParsedCall, call_id: str) -> _CallOutcome:
        outcome = _CallOutcome(call=call, call_id=call_id)
        limit = self._tool_limits.get(call.name)
        if limit is None:
            limit = self._tool_limits[call.name] = asyncio.Semaphore(self.config.per_tool_concurrency)
        stream = self._stream_for_loop()
        async with self._global_limit, limit:
            start = time.perf_counter()
            try:
                outcome.result = await stream.call(
                    call.name, call.arguments, session_id=session_id, call_id=call_id, timeout=self.tool_timeout_s
                )
            except ServiceError as exc:  # Unavailable, DeadlineExceeded
                outcome.infra_error = f"{call.name}: {_describe(exc)}"
            outcome.latency_ms = (time.perf_counter() - start) * 1000.0
        if outcome.result is not None and outcome.result.system_error is not None:
            err = outcome.result.system_error
            name = _STATUS_NAMES.get(err.code, str(err.code))
            outcome.infra_error = f"{call.name}: {name}: {err.message}"
        return outcome

    async def _open_session(self, task: Task) -> tuple[str, str]:
        """``(session_id, "")``, or ``("", what failed)``."""
        try:
            session_id = await self.tool_client.open_session(
                task.context, idle_timeout_s=self.session_idle_timeout_s, attachments=task.attachments,
                timeout=self.tool_timeout_s,
            )
        except (grpc.aio.AioRpcError, ServiceError) as exc:
            return "", f"open_session: {_describe(exc)}"
        return session_id, ""

    async def _close_session(self, session_id: str) -> None:
        # A close that hits its deadline (a stalled tool server) is tried again, up to 3 times:
        # given up, the session would hold the server's memory until its idle expiry.
        for attempt in (1, 2, 3):
            try:
                await self.tool_client.close_session(session_id, timeout=self.tool_timeout_s)
                return
            except (grpc.aio.AioRpcError, ServiceError) as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc.code
                if code != grpc.StatusCode.DEADLINE_EXCEEDED or attempt == 3:
                    logger.warning("could not close tool session %s: %s", session_id, _describe(exc))
                    return

    # ------------------------------------------------------------------ tokens
    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)] if text else []

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def _message_images(task: Task, messages: Sequence[dict[str, Any]]) -> list[ImagePart]:
    """The images that the messages' image parts name (``{"type": "image", "image_id": id}``, an id of
    ``task.attachments``), in order.

    Raises:
        ValueError: an image part names no attachment of the task.
    """
    attached = {image.image_id: image for image in task.attachments}
    out: list[ImagePart] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image":
                image = attached.get(str(part.get("image_id", "")))
                if image is None:
                    raise ValueError(f"task {task.task_id}: an image part names {part.get('image_id')!r}, which is "
                                     f"not among its attachments ({', '.join(sorted(attached)) or 'none'})")
                out.append(image)
    return out


def _stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """End-of-turn ids: eos, and ``<|im_end|>`` when the vocabulary has it."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        ids.append(int(vocab["<|im_end|>"]))
    return tuple(dict.fromkeys(ids))


def _apply_call_limit(calls: Sequence[ParsedCall], limit: int) -> tuple[list[int], dict[int, str]]:
    """The indices of the calls to run, and the refusal message of each call past ``limit``
    calls of its tool name in the turn (``limit`` 0: every call runs)."""
    if limit <= 0:
        return list(range(len(calls))), {}
    allowed: list[int] = []
    refusals: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, call in enumerate(calls):
        seen[call.name] = seen.get(call.name, 0) + 1
        if seen[call.name] <= limit:
            allowed.append(i)
        else:
            times = "1 call" if limit == 1 else f"{limit} calls"
            refusals[i] = (f"{call.name} call {seen[call.name]} of this turn: at most {times} of {call.name} "
                           "per round; this call was not run. Call it again in your next turn if you need it")
    return allowed, refusals


def _fail(traj: RolloutTrajectory, message: str) -> None:
    traj.status = TrajectoryStatus.INFRA_FAILED
    traj.infra_error = message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
