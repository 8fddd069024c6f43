"""The OpenAI endpoints on `transformers serve`'s FastAPI app (`build_server`: routes, request ids, disconnects,
ValueError -> 400) with handlers that subclass its chat / completion handlers for their SSE helpers.

What is replaced and why: its `ModelManager` loads through `getattr(transformers, architectures[0])` (LLaDA is not a
transformers class) and its runners generate token by token; its handlers only warn on unused fields and map
`max_tokens` to an arbitrary canvas. Here one model is served through `DiffusionBatcher`, and every field is honoured
or refused (`protocol.py`).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.utils import EventStream, ModelNotServedError

from . import protocol
from .engine import DiffusionBatcher


class SingleModelManager:
    """What `build_server` needs of a model manager, for the one model this server loaded at start."""

    is_dead = False

    def __init__(self, model_id: str, batcher: DiffusionBatcher) -> None:
        self.model_id, self.batcher, self.created = model_id, batcher, int(time.time())

    def list_models(self) -> list[dict]:
        return [Model(id=self.model_id, created=self.created, object="model", owned_by="llada_hf").model_dump()]

    def check(self, name) -> None:
        if name != self.model_id:
            raise ModelNotServedError(f"model: this server serves {self.model_id!r}, not {name!r}")

    def load_model_streaming(self, name):
        raise ModelNotServedError(f"model: this server serves {self.model_id!r} only (given at start)")

    def shutdown(self) -> None:
        """`build_server` calls this on exit and on `/reset`; the model stays (it is the server's only model)."""


class _DiffusionHandler:
    """What the chat and completion handlers share: request -> `Job`s, the batcher, the answers."""

    honoured: tuple[str, ...] = ()

    def _prepare(self, body: dict) -> tuple[protocol.Job, list[int]]:
        manager: SingleModelManager = self.model_manager
        batcher = manager.batcher
        config = batcher.model.generation_config
        extra_names = protocol.diffusion_fields(config)
        protocol.check_fields(body, self.honoured, extra_names)
        manager.check(body.get("model"))
        if not isinstance(body.get("stream", False), bool | type(None)):
            raise protocol.bad("stream", "must be true or false")
        options = body.get("stream_options")
        if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
            raise protocol.bad("stream_options", "only {'include_usage': bool} is supported")
        prompts = self._prompts(body)
        max_tokens = self._max_tokens(body)
        n = protocol._int(body, "n", 1, default=1, high=64)
        seed = protocol._int(body, "seed", -(2**63), default=None)
        stops = protocol.stop_strings(body)
        settings, samples = protocol.sampling_settings(body, config)
        extra = {name: body[name] for name in extra_names if body.get(name) is not None}
        for name in ("steps", "block_length"):
            protocol._int(extra, name, 1)
        canvas = protocol.plan_canvas(config, batcher.max_positions, max(map(len, prompts)), max_tokens, extra)
        settings.update(extra)
        settings.update(canvas)
        random = samples or settings.get("remasking", getattr(config, "remasking", None)) == "random"
        job = protocol.Job(prompts, n, settings, max_tokens, stops, seed=seed, alone=random and seed is not None)
        return job, [len(p) for p in prompts]

    def _max_tokens(self, body: dict):
        return protocol._int(body, "max_tokens", 1)

    async def _answers(self, job: protocol.Job) -> list[tuple[str, int, str]]:
        batcher = self.model_manager.batcher
        rows = await asyncio.wrap_future(batcher.submit(job))
        decode = self._decode
        return [protocol.cut_answer(r, batcher.end_ids, job.max_tokens, job.stop, decode) for r in rows]

    def _decode(self, ids: list[int]) -> str:
        return self.model_manager.batcher.tokenizer.decode(ids, skip_special_tokens=True)

    @staticmethod
    def _usage(prompt_lens: list[int], n: int, answers) -> CompletionUsage:
        prompt_tokens = sum(prompt_lens) * n
        completion = sum(tokens for _, tokens, _ in answers)
        return CompletionUsage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )

    def _stream(self, events: list) -> EventStream:
        async def gen():
            for event in events:
                yield self.chunk_to_sse(event)
            yield "data: [DONE]\n\n"

        return EventStream(gen(), media_type="text/event-stream")

    async def _complete(self, body: dict) -> tuple[list, str, int, CompletionUsage]:
        """The request's answers from the batcher, with what every response carries: model id, time, usage."""
        job, prompt_lens = self._prepare(body)
        answers = await self._answers(job)
        return answers, self.model_manager.model_id, int(time.time()), self._usage(prompt_lens, job.n, answers)


class DiffusionChatHandler(_DiffusionHandler, ChatCompletionHandler):
    """`/v1/chat/completions`: messages -> the tokenizer's chat template -> the batcher -> `ChatCompletion`."""

    honoured = protocol.CHAT_FIELDS

    def _prompts(self, body: dict) -> list[list[int]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise protocol.bad("messages", "must be a non-empty list of {role, content}")
        plain = []
        for message in messages:
            if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
                raise protocol.bad("messages", "each message must be {role, content} (tool calls are not supported)")
            content = message.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise protocol.bad("messages", "only text content parts are supported")
                content = "".join(p.get("text", "") for p in content)
            if not isinstance(content, str) or not isinstance(message.get("role"), str):
                raise protocol.bad("messages", "role and content must be strings")
            plain.append({"role": message["role"], "content": content})
        tokenizer = self.model_manager.batcher.tokenizer
        try:
            text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # noqa: BLE001 - a template refusing the messages is the request's fault
            raise protocol.bad("messages", f"the chat template refused them ({error})") from error
        return [tokenizer(text, add_special_tokens=False).input_ids]

    def _max_tokens(self, body: dict):
        value = protocol._int(body, "max_completion_tokens", 1)
        return value if value is not None else protocol._int(body, "max_tokens", 1)

    async def handle_request(self, body: dict, request_id: str):
        answers, model_id, created, usage = await self._complete(body)
        if not body.get("stream"):
            choices = [
                Choice(index=i, message=ChatCompletionMessage(role="assistant", content=text), finish_reason=reason)
                for i, (text, _, reason) in enumerate(answers)
            ]
            result = ChatCompletion(
                id=f"chatcmpl-{request_id}", created=created, model=model_id, object="chat.completion",
                choices=choices, usage=usage,
            )  # fmt: skip
            return JSONResponse(result.model_dump(exclude_none=True))

        def chunk(choices, usage=None):
            return ChatCompletionChunk(
                id=f"chatcmpl-{request_id}", created=created, model=model_id, object="chat.completion.chunk",
                choices=choices, usage=usage,
            )  # fmt: skip

        events = []
        for i, (text, _, reason) in enumerate(answers):  # the canvas is final before its first token is known
            events.append(chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))]))
            events.append(chunk([ChunkChoice(index=i, delta=ChoiceDelta(content=text))]))
            events.append(chunk([ChunkChoice(index=i, delta=ChoiceDelta(), finish_reason=reason)]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage))
        return self._stream(events)


class DiffusionCompletionHandler(_DiffusionHandler, CompletionHandler):
    """`/v1/completions`: raw prompt(s), no chat template -> the batcher -> `Completion`."""

    honoured = protocol.COMPLETION_FIELDS

    def _prompts(self, body: dict) -> list[list[int]]:
        if body.get("echo"):
            raise protocol.bad("echo", "echoing the prompt is not supported (only echo=false)")
        if body.get("best_of") not in (None, 1):
            raise protocol.bad("best_of", "needs per-sequence log-probabilities (only best_of=1)")
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise protocol.bad("prompt", "must be a non-empty string or a list of them (token-id prompts: no)")
        tokenizer = self.model_manager.batcher.tokenizer
        return [tokenizer(p).input_ids for p in prompts]

    async def handle_request(self, body: dict, request_id: str):
        answers, model_id, created, usage = await self._complete(body)
        choices = [
            CompletionChoice(index=i, text=text, finish_reason=reason, logprobs=None)
            for i, (text, _, reason) in enumerate(answers)
        ]
        kind = {"id": f"cmpl-{request_id}", "created": created, "model": model_id, "object": "text_completion"}
        if not body.get("stream"):
            return JSONResponse(Completion(**kind, choices=choices, usage=usage).model_dump(exclude_none=True))
        events = [Completion(**kind, choices=[choice]) for choice in choices]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(Completion.model_construct(**kind, choices=[], usage=usage))
        return self._stream(events)


class _NotServed:
    """The other `transformers serve` endpoints (responses, audio, systemone): a 404 that says which exist."""

    async def handle_request(self, *args, **kwargs):
        raise HTTPException(404, "llada-hf serve has /v1/models, /v1/chat/completions and /v1/completions only")


def build_app(model, tokenizer, model_id: str, max_batch_size: int = 8, compile: bool = False):
    """The FastAPI app (transformers' `build_server`) serving `model` under `model_id`, and its batcher."""
    batcher = DiffusionBatcher(model, tokenizer, max_batch_size=max_batch_size, compile=compile)
    manager = SingleModelManager(model_id, batcher)
    chat = DiffusionChatHandler(manager, None)
    completion = DiffusionCompletionHandler(manager, None)
    app = build_server(manager, chat, completion, _NotServed(), _NotServed(), _NotServed())
    app.add_exception_handler(ValueError, openai_error)  # the OpenAI error shape, so clients show the message
    return app, batcher


async def openai_error(_request, error: ValueError) -> JSONResponse:
    """A 400 in OpenAI's shape; `param` is the field the message starts with (`protocol.bad`'s `name: why`)."""
    message = str(error)
    head = message.split(":", 1)[0]
    param = head if ":" in message and head.replace("_", "").isalnum() else None
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return JSONResponse({"error": body}, status_code=400)
