"""The three roles: attacker, learner, critic. Each reaches its model only through
an OpenAI-compatible chat endpoint (:mod:`sparring.llm`)."""

from sparring.agents.attacker import Attack, Attacker
from sparring.agents.critic import CriticResult, VerdictParseError, make_critic, parse_field
from sparring.agents.learner import Learner
from sparring.llm import Binding, Chat, Completion, OpenAIChat

__all__ = [
    "Attack",
    "Attacker",
    "Binding",
    "Chat",
    "Completion",
    "CriticResult",
    "Learner",
    "OpenAIChat",
    "VerdictParseError",
    "make_critic",
    "parse_field",
]
