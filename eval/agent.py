"""SimulEval entry file: ``simuleval --agent eval/agent.py --source S --target T --output DIR``.

Agent options: ``--model`` (checkpoint folder, ``default`` or ``tiny-llama``),
``--adapter`` (LoRA folder), ``--policy``, ``--mode``, ``--slot-len``,
``--source-lang``, ``--target-lang``, ``--max-target-tokens``.  The code lives in
:mod:`vllm_exposst.evaluation.agents`.  For sessions on a running server, over its
WebSocket, use ``eval/remote_agent.py``.
"""

from simuleval.utils import entrypoint

from vllm_exposst.evaluation.agents import ExposstAgent

entrypoint(ExposstAgent)
