"""The seq window (core/seqwindow.py): the arithmetic the agent, the simulator and the
controller's transports share."""

from __future__ import annotations

from fleetgate.core.seqwindow import (
    MAX_BASE_AHEAD,
    MAX_SEQ,
    SEQ_BLOCK,
    jump_problem,
    seq_base_of,
    window_problem,
)


def test_a_seq_belongs_to_exactly_one_block():
    for base in (0, 1, 42, 10**6):
        first, last = base * SEQ_BLOCK + 1, (base + 1) * SEQ_BLOCK - 1
        assert seq_base_of(first) == seq_base_of(last) == base
        assert window_problem(first, base) is None and window_problem(last, base) is None
        assert window_problem(base * SEQ_BLOCK, base) is not None  # n = 0 is never sent
        assert window_problem((base + 1) * SEQ_BLOCK, base) is not None
        assert window_problem(first, base + 1) is not None


def test_the_top_of_the_space_and_the_jump_bound():
    assert window_problem(2**63, seq_base_of(2**63)) is not None
    assert window_problem(MAX_SEQ, seq_base_of(MAX_SEQ)) is not None
    assert window_problem(MAX_SEQ - 1, seq_base_of(MAX_SEQ - 1)) is None
    assert jump_problem(MAX_BASE_AHEAD, 0) is None  # a fresh device, an old controller
    assert jump_problem(MAX_BASE_AHEAD + 1, 0) is not None
    last = 7 * SEQ_BLOCK + 3
    assert jump_problem(7 + MAX_BASE_AHEAD, last) is None
    assert "beyond" in (jump_problem(8 + MAX_BASE_AHEAD, last) or "")
    assert jump_problem(0, last) is None  # older blocks are the stale rule's business
