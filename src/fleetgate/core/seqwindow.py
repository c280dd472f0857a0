"""The window a command's ``seq`` must fall in: one rule for the agent, the simulator and the
controller's transports (docs/protocol.md §4).

The controller numbers a device's commands ``seq = seq_base * SEQ_BLOCK + n``: ``seq_base`` is
the deployment's block (the store's global deployment counter), ``n`` counts the commands the
deployment sent that device (1, 2, …). Every command body carries ``seq_base`` next to ``seq``
so a device can check that the number is one a deployment could have reserved:

- ``seq_base * SEQ_BLOCK < seq < (seq_base + 1) * SEQ_BLOCK`` (``window_problem``);
- ``seq < MAX_SEQ`` (2**53: exact in every JSON implementation, doubles included);
- ``seq_base`` is at most ``MAX_BASE_AHEAD`` blocks beyond the block of the highest seq the
  device ever accepted (``jump_problem``). One deployment advances the counter by one, so the
  bound is a million deployments: far beyond any real gap, while one bad command can no longer
  move a device's ``last_seq`` out of its controller's reach (2**63 did, for good). The space up
  to ``MAX_SEQ`` holds ~90,000 such jumps.

Pure and light (the agent imports it): standard library only.
"""

from __future__ import annotations

SEQ_BLOCK = 100_000
MAX_SEQ = 2**53
MAX_BASE_AHEAD = 1_000_000


def seq_base_of(seq: int) -> int:
    """The block ``seq`` lies in (what a controller sends as ``seq_base`` with it)."""
    return seq // SEQ_BLOCK


def window_problem(seq: int, seq_base: int) -> str | None:
    """Why ``seq`` cannot belong to block ``seq_base``; None when it can."""
    if seq >= MAX_SEQ:
        return f"seq {seq} is not below 2**53"
    if not seq_base * SEQ_BLOCK < seq < (seq_base + 1) * SEQ_BLOCK:
        return (
            f"seq {seq} is outside the window of seq_base {seq_base} "
            f"({seq_base * SEQ_BLOCK} < seq < {(seq_base + 1) * SEQ_BLOCK})"
        )
    return None


def jump_problem(seq_base: int, last_seq: int) -> str | None:
    """Why a device whose highest accepted seq is ``last_seq`` refuses block ``seq_base``."""
    highest = seq_base_of(last_seq)
    if seq_base > highest + MAX_BASE_AHEAD:
        return (
            f"seq_base {seq_base} is more than {MAX_BASE_AHEAD} blocks beyond this device's "
            f"highest ({highest}, last_seq {last_seq})"
        )
    return None
