"""Evaluation: SimulEval agents, the concurrent ``exposst-eval`` runner, metrics and plots.

Quality comes from sacrebleu, latency from SimulEval's own scorer classes applied to
our instances, and cost from the tokens the engine really computed.  See
``docs/evaluation.md``.
"""
