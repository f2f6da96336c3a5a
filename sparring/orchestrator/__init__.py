"""The orchestrator: one run of the loop, from engines up to the summary.

- ``loop``: ``Loop`` (one run) and ``run_main`` (what ``sparring run`` calls)
- ``engines``: base bindings, engine start-up and warm-up (names and processes:
  :mod:`sparring.serving.deploy`)
- ``trainer``: the trainer process and its supervision
- ``wiring``: the agents, the registry, the episode context, the swapper and its gate
- ``scheduling``: episodes up to the concurrency until the budget, retries
- ``reviews``: paused episodes resumed as reviews arrive
- ``progress``: counters and progress bars
"""

from sparring.graphs.redteam import lookalike_items
from sparring.orchestrator.engines import base_bindings
from sparring.orchestrator.loop import DEFAULT_CONSUMER, Loop, new_run_id, open_bus, run_main
from sparring.orchestrator.progress import Counters
from sparring.orchestrator.trainer import TrainerProcess
from sparring.serving.deploy import engine_process, local_models, role_model, served_model

__all__ = [
    "DEFAULT_CONSUMER",
    "Counters",
    "Loop",
    "TrainerProcess",
    "base_bindings",
    "engine_process",
    "local_models",
    "lookalike_items",
    "new_run_id",
    "open_bus",
    "role_model",
    "run_main",
    "served_model",
]
