"""What the routes share: the session engine and the names the server answers to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..defaults import target_token_limit
from ..engine import SessionConfig, SessionTooLong, SimulEngine, UnknownModelError
from ..origins import OriginPolicy
from .listeners import ListenerRegistry, ListenSettings

# request keys that select how a sentence is translated (``simul`` object, session.update)
SIMUL_KEYS = (
    "policy",
    "slot_len",
    "mode",
    "source_lang",
    "target_lang",
    "refeed",
    "segmentation",
    "max_sentence_words",
    "sentence_pause",
)
# limits that ``null`` switches off (a cut before the model's limit still applies); for
# every other key ``null`` means the server's default, and an omitted key keeps its value
SWITCHED_OFF_BY_NULL = ("max_sentence_words", "sentence_pause")


@dataclass
class ServerContext:
    engine: SimulEngine
    served_models: list[str]
    # speakers' sessions as their listeners see them (listeners.py)
    listeners: ListenerRegistry = field(default_factory=lambda: ListenerRegistry(ListenSettings()))
    # live WebSocket connections (realtime.py): told when the engine core dies
    connections: set[Any] = field(default_factory=set)
    # browser pages that may open the WebSocket routes (exposst.allowed_origins)
    origins: OriginPolicy = field(default_factory=OriginPolicy)

    @property
    def max_speakers(self) -> int:
        """Realtime connections served at once (``exposst.max_speakers``, else max_sessions)."""
        return self.engine.options.max_speakers or self.engine.max_sessions

    @property
    def speakers_full(self) -> bool:
        """``max_speakers`` connections (realtime and alignatt together) are open."""
        return len(self.connections) >= self.max_speakers

    def session_config(self, model: str | None, simul: dict[str, Any] | None) -> SessionConfig:
        """Validate a request's model and ``simul`` options into a session config."""
        simul = simul or {}
        if not isinstance(simul, dict):
            raise ValueError("'simul' must be a JSON object")
        unknown = sorted(set(simul) - set(SIMUL_KEYS))
        if unknown:
            raise ValueError(f"unknown 'simul' option(s) {unknown}; known: {list(SIMUL_KEYS)}")
        lora = self.adapter_for(model)
        config = self.engine.session_config(lora=lora, **simul)
        for key in SWITCHED_OFF_BY_NULL:
            if key in simul and simul[key] is None:
                setattr(config, key, None)
        config.validate()
        return config

    def adapter_for(self, model: str | None) -> str | None:
        """None for the base model, the adapter's name for a LoRA, else an error."""
        if model is None or model in self.served_models:
            return None
        adapters = self.engine.adapters()
        if model in adapters:
            return model
        known = [*self.served_models, *sorted(adapters)]
        raise UnknownModelError(f"the model {model!r} does not exist; served: {known}")

    def check_source_fits(self, config: SessionConfig, source: str) -> None:
        """Refuse a source whose offline prompt alone passes the position limit."""
        template = self.engine.template(config)
        needed = len(template.offline_prompt(source))
        if needed >= self.engine.max_model_len:
            raise SessionTooLong(
                f"the source needs {needed} positions before any target token; "
                f"positions must stay below {self.engine.max_model_len} (max_model_len)"
            )

    def source_token_budget(self, config: SessionConfig) -> int:
        """Most source tokens a sentence may have so that it can never reach the model's
        limit (``max_model_len``), in positions or in tokens the engine holds: prefix,
        header, the most target tokens the engine allows for that source
        (``target_token_limit``), and the source with every slot full size (positions)
        or with a refeed copy per source token and the lookahead (tokens held)."""
        template = self.engine.template(config)
        room = self.engine.max_model_len - template.prefix_len - template.header_len
        budget = 0
        while _room_needed(budget + 1, config) <= room:
            budget += 1
        return budget


def _room_needed(source_tokens: int, config: SessionConfig) -> int:
    """Positions or held tokens, whichever is more, that a sentence's source and target
    take at most besides the prefix and header."""
    slots = max(1, math.ceil(source_tokens / config.slot_len)) * config.slot_len
    held = 2 * source_tokens + 1  # each source token, at most one refeed copy per READ
    return max(slots, held) + target_token_limit(source_tokens, config.max_target_tokens)


async def create_context(engine_client: Any, state: Any) -> ServerContext:
    from transformers import AutoTokenizer

    vllm_config = engine_client.vllm_config
    tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
    models = state.openai_serving_models
    engine = SimulEngine(engine_client, tokenizer, lora_requests=models.lora_requests)
    listeners = ListenerRegistry(ListenSettings.from_options(engine.options))
    origins = OriginPolicy.from_option(engine.options.allowed_origins)
    served = [path.name for path in models.base_model_paths]
    return ServerContext(engine, served, listeners, origins=origins)
