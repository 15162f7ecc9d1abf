"""Typed errors for bad user input (docs/algorithm.md §4, §8; DEVELOPERS ground rule 7).

Every error names what was wrong and what would be accepted. They subclass ``ValueError``
so callers that already catch ``ValueError`` keep working.
"""


class SSPSError(ValueError):
    """Base class of every error ssps-nni raises for bad input, and of a diverged search.

    Attributes:
        exit_status: the status a command-line tool exits with for this error: 2 (bad input),
            3 for :class:`SearchDivergedError`.
    """

    exit_status = 2


class CandidateError(SSPSError):
    """Candidate bit-widths are empty, not integers, or outside 1..32."""


class BudgetError(SSPSError):
    """A budget is malformed, names an unknown cost, or cannot be reached."""


class UnknownCostError(BudgetError):
    """A cost model name is not registered (see ``ssps_nni.cost.COST_MODELS``)."""


class LutError(BudgetError):
    """A LUT cost's table cannot be read, is not a LUT, or has no entry for a layer's bits."""


class LutMissingError(LutError):
    """A ``lut`` budget was given without its table (``cost_options={'lut': {'path': ...}}``)."""


class CostOptionsError(SSPSError):
    """``cost_options`` is not a mapping ``{cost: {option: value}}``."""


class UnusedCostOptionsError(CostOptionsError):
    """``cost_options`` names costs that no budget uses.

    Attributes:
        costs: the sorted names of those costs.
    """

    def __init__(self, message: str, costs: list):
        super().__init__(message)
        self.costs = list(costs)


class NoQuantizableLayersError(SSPSError):
    """The model has no ``nn.Conv2d`` / ``nn.Linear`` left to search after include/exclude."""


class PolicyError(SSPSError):
    """A policy file is unreadable, malformed, or does not match the model."""


class ExportError(SSPSError):
    """A fixed model cannot be exported: an undecided or uncalibrated cell, a bit-width or opset
    the target does not support, or a checkpoint that does not fit the model."""


class PolicyNotFinalError(PolicyError):
    """A policy file is a search's interim snapshot (``"final": false``), not its result."""


class SearchDivergedError(SSPSError):
    """The training loss (or the logits objective) became NaN or inf during a search.

    Not bad input in the usual sense, so command-line tools give it its own exit status
    (:attr:`exit_status`); the message names the step and, where it was found, the first layer
    whose output was not finite. The search writes no final policy.
    """

    exit_status = 3
