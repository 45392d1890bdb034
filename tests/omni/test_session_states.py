"""The session state machine on its own: how the runner's events, pause and resume combine
(the orders a real server can produce, without waiting for a model to hit them)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from services.omni.session_runner import (
    Activity,
    ActivityChanged,
    Mode,
    SessionSpec,
    TurnDone,
)
from services.omni.sessions import Session, SessionManager, State, StateEvent
from services.runtime.chat.messages import FinishReason


@pytest.fixture
def manager() -> SessionManager:
    # The state handling touches neither the runtime, the engine nor the settings.
    return SessionManager(cast(Any, None), cast(Any, None), cast(Any, None))


def _session() -> Session:
    spec = SessionSpec(
        session_id="s",
        mode=Mode.CHAT,
        system_prompt="",
        sampling=cast(Any, None),
        speech=cast(Any, None),
        voice=cast(Any, None),
        max_images=1,
    )
    return Session(spec=spec, kind="session_chat")


def _replying(manager: SessionManager, session: Session) -> None:
    manager._on_output(session, ActivityChanged(0, Activity.RESPONDING, "replying"))
    assert session.state is State.RESPONDING


def test_pause_between_turn_done_and_listening_resumes_to_listening(
    manager: SessionManager,
) -> None:
    session = _session()
    _replying(manager, session)
    manager._on_output(session, TurnDone(0, FinishReason.STOP, 3, 4, 0.1))
    assert manager.pause(session) is State.PAUSED
    assert manager.resume(session) is State.LISTENING
    # The runner's own LISTENING note, arriving late, changes nothing more.
    manager._on_output(session, ActivityChanged(1, Activity.LISTENING, "turn completed"))
    assert session.state is State.LISTENING


def test_pause_mid_reply_resumes_to_responding(manager: SessionManager) -> None:
    session = _session()
    _replying(manager, session)
    manager.pause(session)
    assert manager.resume(session) is State.RESPONDING


def test_activity_while_paused_is_kept_for_resume(manager: SessionManager) -> None:
    session = _session()
    _replying(manager, session)
    manager.pause(session)
    manager._on_output(session, ActivityChanged(1, Activity.LISTENING, "turn completed"))
    assert session.state is State.PAUSED
    assert manager.resume(session) is State.LISTENING
    states = [event.state for _, event in session.events if isinstance(event, StateEvent)]
    assert states == [State.RESPONDING, State.PAUSED, State.LISTENING]
