"""Typed errors for bad user input (docs/algorithm.md §4, §8; DEVELOPERS ground rule 7).

Every error names what was wrong and what would be accepted. They subclass ``ValueError``
so callers that already catch ``ValueError`` keep working.
"""


class SSPSError(ValueError):
    """Base class of every error ssps-nni raises for bad input."""


class CandidateError(SSPSError):
    """Candidate bit-widths are empty, not integers, or outside 1..32."""


class BudgetError(SSPSError):
    """A budget is malformed, names an unknown cost, or cannot be reached."""


class UnknownCostError(BudgetError):
    """A cost model name is not registered (see ``ssps_nni.cost.COST_MODELS``)."""


class NoQuantizableLayersError(SSPSError):
    """The model has no ``nn.Conv2d`` / ``nn.Linear`` left to search after include/exclude."""


class PolicyError(SSPSError):
    """A policy file is unreadable, malformed, or does not match the model."""
