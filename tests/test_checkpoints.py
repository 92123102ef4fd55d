"""Resuming: the fit calls of a resumed run and the seed shift (checkpoints.fit_spans; the run
starts from restore.resume).

The end-to-end resume (kill -9, same command) is in test_fault_tolerance.py; here the step
arithmetic is checked against a step-by-step count written in the test.
"""

from __future__ import annotations

import pytest

from simclr_tf import checkpoints


def _steps_by_epoch(start: int, spe: int, total: int) -> dict[int, int]:
    """Reference: walk every step from ``start`` to ``total``, counting steps per epoch."""
    spe = min(spe, total)
    counts: dict[int, int] = {}
    for step in range(start, total):
        counts[step // spe] = counts.get(step // spe, 0) + 1
    return counts


@pytest.mark.parametrize(
    "start, spe, total",
    [(0, 5, 20), (0, 5, 4), (3, 5, 20), (5, 5, 20), (7, 5, 18), (17, 5, 18), (0, 7, 7)],
)
def test_fit_spans_cover_exactly_the_remaining_steps(start, spe, total):
    spans = checkpoints.fit_spans(start, spe, total)
    covered: dict[int, int] = {}
    for span in spans:
        for epoch in range(span.initial_epoch, span.epochs):
            covered[epoch] = span.steps_per_epoch
    expected = _steps_by_epoch(start, spe, total)
    # Every epoch with steps left is fitted, the interrupted one with only its remaining steps;
    # the last epoch may be cut by StopAtStep (its span asks for a whole epoch).
    assert sorted(covered) == sorted(expected)
    for epoch, steps in expected.items():
        assert covered[epoch] >= steps, epoch
        if epoch != max(expected):
            assert covered[epoch] == steps, epoch
    assert len(spans) == (2 if start % min(spe, total) and max(expected) > start // spe else 1)


def test_resumed_seed_moves_with_the_start_step():
    assert checkpoints.resumed_seed(3, 0) == 3
    assert checkpoints.resumed_seed(3, 2) - checkpoints.resumed_seed(3, 1) == (
        checkpoints.RESUME_SEED_STRIDE
    )
