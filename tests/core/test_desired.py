"""agent.desired on both interpreters: the runtime's desired-state handling is a table."""
import corekit

from agent import desired as D


def test_every_move_is_in_the_table():
    assert sorted(D.TRANSITIONS) == sorted(D.STATES)
    for state, moves in D.TRANSITIONS.items():
        for event, nxt in moves.items():
            assert event in D.EVENTS and nxt in D.STATES, (state, event)
    assert D.ACKS_REFUSAL == {D.Arrived: True, D.RetryDue: False}
    assert "WAITING --RetryDue--> TRYING" in D.table_text()
    assert len(D.table_text()) == sum(len(m) for m in D.TRANSITIONS.values())


def test_a_refused_state_waits_then_is_retried_or_overtaken():
    c = D.Convergence()
    c.move(D.Arrived, "s1")
    assert c.state == D.TRYING and c.pending == "s1"
    c.move(D.Refused, now=1000)
    assert c.state == D.WAITING and c.retry_at == 1000 + D.RETRY_MS
    assert not c.retry_due(1000 + D.RETRY_MS - 1) and c.retry_due(1000 + D.RETRY_MS)
    c.move(D.RetryDue)
    assert c.state == D.TRYING and c.pending == "s1"
    c.move(D.Refused, now=2000)
    c.move(D.Arrived, "s2")  # a newer winner replaces the pending one
    assert c.pending == "s2"
    c.move(D.Reached)
    assert c.state == D.IDLE and c.pending is None and not c.retry_due(10**9)
    c.move(D.Arrived, "s3")
    c.move(D.Refused, now=0)
    c.move(D.Overtaken)
    assert c.state == D.IDLE and c.pending is None


def test_a_move_outside_the_table_is_a_bug():
    c = D.Convergence()
    corekit.raises(ValueError, c.move, D.Reached)  # nothing is being tried
    c.move(D.Arrived, "s")
    c.move(D.Failed)
    assert c.state == D.IDLE
