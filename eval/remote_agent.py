"""SimulEval entry file for a running server: ``simuleval --agent eval/remote_agent.py
--source S --target T --output DIR --server-url ws://127.0.0.1:8000``.

Agent options: ``--server-url`` (``ws://HOST:PORT``), ``--api-key`` (default
``$VLLM_API_KEY``), ``--model`` (served model or LoRA adapter name), ``--policy``,
``--mode``, ``--slot-len``, ``--source-lang``, ``--target-lang`` (each left out: the
server's setting), ``--timeout`` (seconds to wait for any server event).  The agent is
a client of the server's WebSocket ``/v1/simul/realtime`` (docs/api.md); the code
lives in :mod:`vllm_exposst.evaluation.agents` (``RemoteExposstAgent``).
"""

from simuleval.utils import entrypoint

from vllm_exposst.evaluation.remote_agent import RemoteExposstAgent

entrypoint(RemoteExposstAgent)
