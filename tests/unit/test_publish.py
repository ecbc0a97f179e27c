"""A confirmed batch's bookkeeping: which delivery tags the broker has settled, which task ids it rejected."""
from __future__ import annotations

from amqp import Message

from celery_app.publish import Confirms, UnconfirmedTasks, task_id_of


def _confirms(*ids: str) -> Confirms:
    confirms = Confirms()
    for task_id in ids:
        confirms.published(task_id)
    return confirms


def test_a_multiple_ack_settles_every_tag_up_to_it_and_no_later_one():
    confirms = _confirms("a", "b", "c", "d")
    confirms.settle(3, multiple=True, ok=True)
    assert confirms.pending == {4: "d"} and confirms.rejected == []


def test_a_nack_names_the_rejected_task_and_a_repeated_settle_changes_nothing():
    confirms = _confirms("a", "b", "c")
    confirms.settle(2, multiple=False, ok=False)
    confirms.settle(2, multiple=False, ok=True)
    confirms.settle(1, multiple=False, ok=True)
    assert confirms.pending == {3: "c"} and confirms.rejected == ["b"]


def test_the_task_id_is_the_correlation_id_or_the_protocol_2_header():
    assert task_id_of(Message("{}", correlation_id="t-1"), "m") == "t-1"
    assert task_id_of(Message("{}", application_headers={"id": "t-2"}), "m") == "t-2"
    assert task_id_of(Message("{}"), "message 7") == "message 7"


def test_unconfirmed_tasks_says_how_many_and_why_showing_the_first_ids():
    error = UnconfirmedTasks([f"t{n}" for n in range(7)], "rejected by the broker")
    assert str(error) == "7 task(s) not confirmed by the broker (rejected by the broker): t0, t1, t2, t3, t4, ..."
    assert error.task_ids[-1] == "t6"
