"""Errors in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import (
    EngineDead,
    SessionRejected,
    SessionTimeout,
    SessionTooLong,
    UnknownModelError,
)

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ApiError(Exception):
    """An error with its HTTP status and OpenAI-style type and code."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str = "invalid_parameter"
    param: str | None = None

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 429 else {}


def api_error(exc: BaseException) -> ApiError:
    """Map session and validation errors to their documented status and code."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownModelError):
        return ApiError(404, str(exc), "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, SessionRejected):
        return ApiError(429, str(exc), "rate_limit_error", "too_many_sessions")
    if isinstance(exc, SessionTimeout):
        return ApiError(408, str(exc), "timeout_error", "idle_timeout")
    if isinstance(exc, EngineDead):
        return ApiError(503, str(exc), "server_error", "engine_dead")
    if isinstance(exc, SessionTooLong):
        return ApiError(400, str(exc), "invalid_request_error", "context_length_exceeded")
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", "internal")
