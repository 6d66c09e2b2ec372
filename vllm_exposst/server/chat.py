"""``POST /v1/simul/chat/completions``: batch simultaneous translation, OpenAI-compatible.

The last user message is the source; the server feeds it word by word under the
policy.  ``stream=true`` sends ``chat.completion.chunk`` events whose ``simul``
says how many source words were read when the text was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import Session, SessionRejected, SimulEngine
from . import chat_talk, metrics
from .context import ServerContext
from .errors import ApiError, api_error


def source_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
            if not isinstance(content, str) or not content.strip():
                raise ApiError(400, "the last user message has no text", param="messages")
            return content
    raise ApiError(400, "no user message: the last user message is the source", param="messages")


async def parse_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"malformed JSON body: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def error_response(exc: BaseException) -> JSONResponse:
    error = api_error(exc)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def chat_completions(request: Request, context: ServerContext):
    try:
        body = await parse_body(request)
        source = source_text(body)
        model = body.get("model")
        config = context.session_config(model, body.get("simul"))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ApiError(400, "max_tokens must be a positive integer", param="max_tokens")
            config.max_target_tokens = max_tokens
        if config.segmentation == "auto":  # sentence by sentence (chat_talk.py)
            parts = chat_talk.sentences(context, config, source)
            return await _talk(request, context, config, parts, model, body.get("stream"))
        context.check_source_fits(config, source)
        session = await context.engine.open(config)
    except Exception as exc:  # every failure before streaming starts has a status
        if isinstance(exc, SessionRejected):
            metrics.SESSIONS_REJECTED.inc()
        return error_response(exc)
    metrics.ACTIVE_SESSIONS.inc()
    meta = _meta(context, model)
    if body.get("stream"):
        return StreamingResponse(
            _stream(context.engine, session, source, meta, config), media_type="text/event-stream"
        )
    return await _complete(request, context.engine, session, source, meta, config)


async def _feed(session, source: str) -> None:
    await session.push(source)
    await session.finish()


def _simul_summary(result, tokens_computed: int) -> dict[str, Any]:
    return {
        "delays": result.delays,
        "tokens_computed": tokens_computed,
        "tokens_cached": result.tokens_cached,
        "elapsed_ms": [round(1000 * t, 1) for t in result.elapsed],
        "source_words": result.source_words,
    }


async def _finish_result(engine: SimulEngine, session: Session):
    result = await session.result()
    metrics.observe_result(result)
    tokens = await engine.tokens_computed(result.request_ids)
    return result, tokens


async def _complete(
    request: Request, engine: SimulEngine, session: Session, source: str, meta: dict, config
) -> JSONResponse:
    """Non-streaming: wait for the sentence, abort it if the client goes away."""
    work = asyncio.ensure_future(_translate(engine, session, source))
    try:
        while not work.done():
            if await request.is_disconnected():
                work.cancel()
                await session.abort()
                return JSONResponse({}, status_code=499)
            await asyncio.wait({work}, timeout=0.1)
        result, tokens = work.result()
    except Exception as exc:
        return error_response(exc)
    finally:
        metrics.ACTIVE_SESSIONS.dec()
        await session.close()
    return JSONResponse(
        {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": _finish_reason(result, config),
                }
            ],
            "usage": {
                "prompt_tokens": result.source_tokens_read,
                "completion_tokens": len(result.target_ids),
                "total_tokens": result.source_tokens_read + len(result.target_ids),
            },
            "simul": _simul_summary(result, tokens),
        }
    )


async def _translate(engine: SimulEngine, session: Session, source: str):
    await _feed(session, source)
    return await _finish_result(engine, session)


def _chunk(meta: dict, delta: dict, finish: str | None, simul: dict) -> str:
    event = {
        **meta,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "simul": simul,
    }
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _finish_reason(result, config) -> str:
    limit = config.max_target_tokens
    return "length" if limit and len(result.target_ids) >= limit else "stop"


async def _stream(
    engine: SimulEngine, session: Session, source: str, meta: dict, config
) -> AsyncIterator[str]:
    """SSE: a chunk per written word, a final chunk with the summary, then [DONE]."""
    try:
        await _feed(session, source)
        first = True
        async for piece in session:
            if not piece.text:  # tokens of a character still unfinished
                continue
            delta = {"content": piece.text}
            if first:
                delta["role"] = "assistant"
                first = False
            yield _chunk(meta, delta, None, {"source_words_read": piece.source_words_read})
        result, tokens = await _finish_result(engine, session)
        yield _chunk(meta, {}, _finish_reason(result, config), _simul_summary(result, tokens))
    except Exception as exc:  # after the 200 header: the error travels in the stream
        yield f"data: {json.dumps(api_error(exc).body())}\n\n"
    finally:
        metrics.ACTIVE_SESSIONS.dec()
        with contextlib.suppress(Exception):
            await session.close()
    yield "data: [DONE]\n\n"


def _meta(context: ServerContext, model: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": model or context.served_models[0],
    }


# -- segmentation: auto (the text's sentences one after the other) ----------------------
async def _talk(request: Request, context: ServerContext, config, parts, model, stream):
    meta = _meta(context, model)
    if stream:
        return StreamingResponse(
            _stream_talk(context, config, parts, meta), media_type="text/event-stream"
        )
    done: list[chat_talk.Translated] = []

    async def run() -> None:
        async for _, item in chat_talk.translate(context, config, parts):
            if isinstance(item, chat_talk.Translated):
                done.append(item)

    work = asyncio.ensure_future(run())
    try:
        while not work.done():
            if await request.is_disconnected():
                work.cancel()  # the sentence in progress is closed by translate()
                with contextlib.suppress(BaseException):
                    await work
                return JSONResponse({}, status_code=499)
            await asyncio.wait({work}, timeout=0.1)
        work.result()
    except Exception as exc:
        if isinstance(exc, SessionRejected):
            metrics.SESSIONS_REJECTED.inc()
        return error_response(exc)
    source_tokens = sum(d.result.source_tokens_read for d in done)
    target_tokens = sum(len(d.result.target_ids) for d in done)
    return JSONResponse(
        {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": chat_talk.joined_text(done)},
                    "finish_reason": _talk_finish_reason(done, config),
                }
            ],
            "usage": {
                "prompt_tokens": source_tokens,
                "completion_tokens": target_tokens,
                "total_tokens": source_tokens + target_tokens,
            },
            "simul": chat_talk.summary(done),
        }
    )


def _talk_finish_reason(done: list[chat_talk.Translated], config) -> str:
    reasons = {_finish_reason(d.result, config) for d in done}
    return "length" if "length" in reasons else "stop"


async def _stream_talk(context: ServerContext, config, parts, meta: dict) -> AsyncIterator[str]:
    """SSE as for one sentence; each chunk's ``simul`` names its ``sentence``, and the
    first text of a sentence after another's starts with a space."""
    done: list[chat_talk.Translated] = []
    first, wrote, space, last_index = True, False, False, -1
    try:
        async for index, item in chat_talk.translate(context, config, parts):
            if isinstance(item, chat_talk.Translated):
                done.append(item)
                continue
            text = item.text
            if not text:  # tokens of a character still unfinished
                continue
            if index != last_index:  # a new sentence: a space once something was written
                last_index, space = index, wrote
            if space and text.strip():
                text, space = " " + text.lstrip(), False
            wrote = wrote or bool(text.strip())
            delta = {"content": text}
            if first:
                delta["role"] = "assistant"
                first = False
            simul = {"source_words_read": item.source_words_read, "sentence": index}
            yield _chunk(meta, delta, None, simul)
        yield _chunk(meta, {}, _talk_finish_reason(done, config), chat_talk.summary(done))
    except Exception as exc:  # after the 200 header: the error travels in the stream
        yield f"data: {json.dumps(api_error(exc).body())}\n\n"
    yield "data: [DONE]\n\n"
