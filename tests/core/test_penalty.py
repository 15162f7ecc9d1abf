"""Constraint loss (ssps_nni/penalty.py, docs/algorithm.md §5): every form against a literal."""
from __future__ import annotations

import pytest
import torch

from ssps_nni.penalty import PENALTY_FORMS, ConstraintLoss, penalty_term


def expected_of(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("form, lam, e_cost, target, task_loss, literal", [
    ("hinge", 2.0, 3.0, 2.0, 3.5, 4.5),  # 3.5 + 2 * max(0, 1.5 - 1)
    ("hinge", 2.0, 1.0, 2.0, 0.0, 0.0),  # under budget: no term
    ("abs", 2.0, 1.0, 2.0, 1.5, 2.5),  # 1.5 + 2 * |0.5 - 1|
    ("abs", 0.5, 6.0, 2.0, 0.0, 1.0),  # 0.5 * |3 - 1|
    ("log2", 1.0, 4.0, 1.0, 1.0, 2.921812055672806),  # 1 + (ln 4)^2
    ("log2", 3.0, 0.5, 0.5, 2.0, 2.0),  # r = 1: no term
])
def test_additive_forms(form, lam, e_cost, target, task_loss, literal):
    total, details = ConstraintLoss(form, lam=lam)(torch.tensor(task_loss), {"bitops": expected_of(e_cost)},
                                                   {"bitops": target})
    assert float(total.detach()) == pytest.approx(literal, rel=1e-6)
    assert details["ratio/bitops"] == e_cost / target
    assert details["loss_ssps"] == pytest.approx(literal - task_loss, rel=1e-6)


def test_mul_form():
    fn = ConstraintLoss("mul", beta=0.5)
    task = torch.tensor(3.0, requires_grad=True)
    e = expected_of(4.0)
    total, details = fn(task, {"bitops": e}, {"bitops": 1.0})
    assert float(total.detach()) == pytest.approx(6.0)  # 3 * 4^0.5
    assert details == {"ratio/bitops": 4.0, "loss_ssps": pytest.approx(3.0)}
    total.backward()
    assert float(task.grad) == pytest.approx(2.0)  # r^beta
    assert float(e.grad) == pytest.approx(0.75)  # 3 * 0.5 * 4^-0.5


def test_several_budgets_add_or_multiply():
    expected = {"bitops": expected_of(3.0), "size": expected_of(1.0)}
    targets = {"bitops": 2.0, "size": 4.0}
    term, details = ConstraintLoss("abs", lam=2.0).extra(torch.tensor(1.0), expected, targets)
    assert float(term.detach()) == pytest.approx(2.5)  # 2 * (|1.5 - 1| + |0.25 - 1|)
    assert details["ratio/size"] == 0.25
    term, _ = ConstraintLoss("hinge", lam=2.0).extra(torch.tensor(1.0), expected, targets)
    assert float(term.detach()) == pytest.approx(1.0)  # 2 * (0.5 + 0)
    term, _ = ConstraintLoss("mul", beta=1.0).extra(torch.tensor(2.0), expected, targets)
    assert float(term.detach()) == pytest.approx(2.0 * (1.5 * 0.25 - 1))  # -1.25


@pytest.mark.parametrize("form", PENALTY_FORMS)
def test_gradient_reaches_expected_cost_and_dtype(form):
    e = expected_of(3.0)
    term, _ = ConstraintLoss(form, lam=1.0, beta=0.6).extra(torch.tensor(2.0), {"bitops": e}, {"bitops": 2.0})
    assert term.dtype == torch.float32
    term.backward()
    assert float(e.grad) > 0  # over budget: every form pushes the cost down


def test_large_bitops_do_not_overflow_in_half_precision():
    task = torch.tensor(1.0, dtype=torch.float16)
    term, details = ConstraintLoss("abs").extra(task, {"bitops": expected_of(3e12)}, {"bitops": 1.5e12})
    assert float(term.detach()) == 1.0 and details["ratio/bitops"] == 2.0


def test_penalty_term_and_errors():
    assert float(penalty_term(torch.tensor(0.5), "hinge")) == 0.0
    assert float(penalty_term(torch.tensor(2.0), "abs")) == 1.0
    with pytest.raises(ValueError, match="accepted: hinge, abs, log2"):
        penalty_term(torch.tensor(1.0), "mul")
    with pytest.raises(ValueError, match="accepted: hinge, abs, log2, mul"):
        ConstraintLoss("square")
    with pytest.raises(ValueError, match=">= 0"):
        ConstraintLoss("abs", lam=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        ConstraintLoss("mul", beta=-0.5)
