"""gpt.core.thread_team: ranks that run side by side, barriers that hold, errors that stop all."""
from __future__ import annotations

import random
import threading
import time

import pytest

from gpt.core.thread_team import ThreadTeam, thread_team


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_run_returns_every_ranks_result_in_rank_order(ranks):
    team = ThreadTeam(ranks)
    assert team.run(lambda rank, meeting: rank * 10) == [10 * r for r in range(ranks)]
    caller = threading.get_ident()
    idents = team.run(lambda rank, meeting: threading.get_ident())
    assert idents[0] == caller                          # rank 0 runs in the calling thread
    assert len(set(idents)) == ranks


@pytest.mark.parametrize("ranks", [2, 3])
def test_no_rank_passes_a_barrier_before_every_rank_has_reached_it(ranks):
    # Each rank counts its phases, sleeping at random so that the ranks drift apart; right
    # after its k-th barrier every rank must have finished phase k. With three ranks a fast
    # rank sends for the next barrier before a slow one has read the current one's messages.
    phases = [0] * ranks
    seen_behind = []
    rng = [random.Random(seed) for seed in range(ranks)]

    def work(rank, meeting):
        for phase in range(1, 41):
            time.sleep(rng[rank].random() * 0.002)
            phases[rank] = phase
            meeting.meet(rank)
            if min(phases) < phase:
                seen_behind.append((rank, phase, list(phases)))
        return phases[rank]

    assert ThreadTeam(ranks).run(work) == [40] * ranks
    assert seen_behind == []


@pytest.mark.parametrize("failing_rank", [0, 1, 2])
def test_an_error_in_any_rank_stops_the_others_and_reaches_the_caller(failing_rank):
    team = ThreadTeam(3)
    meetings_done = [0] * 3

    def work(rank, meeting):
        for step in range(1000):
            if rank == failing_rank and step == 3:
                raise ValueError(f"rank {rank} failed")
            meeting.meet(rank)
            meetings_done[rank] += 1
        return "finished"

    with pytest.raises(ValueError, match=f"rank {failing_rank} failed"):
        team.run(work)
    assert max(meetings_done) <= 4                   # nobody ran on alone
    # The team serves the next run as if nothing had happened.
    assert team.run(lambda rank, meeting: (meeting.meet(rank), rank)[1]) == [0, 1, 2]


def test_keyboard_interrupt_in_the_caller_stops_the_team():
    team = ThreadTeam(2)

    def work(rank, meeting):
        if rank == 0:
            raise KeyboardInterrupt
        while True:                                  # would wait here for ever, unstopped
            meeting.meet(rank)

    with pytest.raises(KeyboardInterrupt):
        team.run(work)
    assert team.run(lambda rank, meeting: rank) == [0, 1]


def test_teams_are_made_once_per_size_and_sizes_are_checked():
    assert thread_team(2) is thread_team(2)
    assert thread_team(3) is not thread_team(2)
    with pytest.raises(ValueError, match="ranks must be at least 1, not 0"):
        ThreadTeam(0)
