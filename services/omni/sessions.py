"""The loop side of live sessions: opening (max sessions), input with sequence numbers, the one
event stream per session, pause/resume/close, and the pause, idle and max-duration timeouts.

Each session is one executor job (`SessionRunner.run`) submitted at open: it waits in the FIFO
like any job (its readers get queue position and ETA, estimated per session kind) and holds the
device until the session ends. A pump task turns the job's events into session events, kept in
a bounded buffer until a reader takes them. Closing cancels the job; the runner stops at its
next poll. Closed sessions are remembered for a while so late calls learn why they ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import queue
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine
from services.omni.recordings import SessionRecorder, prune_recordings
from services.omni.session_runner import (
    Activity,
    ActivityChanged,
    EndOfTurn,
    Mode,
    SessionEvent,
    SessionInput,
    SessionRunner,
    SessionSpec,
    TurnDone,
)
from services.runtime.app import Accepted, ModelState, ServiceRuntime
from services.runtime.errors import (
    FailedPrecondition,
    JobCancelled,
    NotFound,
    ResourceExhausted,
    ServingError,
)
from services.runtime.executor import JobFinished, JobOutput, JobQueued

log = logging.getLogger("mmserve.omni")

_WATCHDOG_SECONDS = 0.25
_TOMBSTONE_SECONDS = 600.0
_MAX_PENDING_INPUTS = 2000
_SETTLE_SECONDS = 10.0


class State(enum.Enum):
    LISTENING = "listening"
    RESPONDING = "responding"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass(frozen=True)
class StateEvent:
    state: State
    reason: str


@dataclass(frozen=True)
class QueueEvent:
    position: int
    queue_length: int
    eta_seconds: float


@dataclass(frozen=True)
class HeartbeatEvent:
    queued: bool
    elapsed_seconds: float


OutEvent = StateEvent | QueueEvent | HeartbeatEvent | SessionEvent


@dataclass
class Session:
    spec: SessionSpec
    kind: str
    # The API key id that opened it ("" with auth off): only that key may use it.
    owner: str = ""
    opened: float = field(default_factory=time.monotonic)
    state: State = State.LISTENING
    activity: Activity = Activity.LISTENING
    queued: QueueEvent | None = None  # set while the session waits for the device
    acked: int = -1
    turn: int = 0
    last_input: float = field(default_factory=time.monotonic)
    paused_at: float | None = None
    readers: int = 0
    reader_token: int = 0
    close_reason: str = ""
    inbox: queue.Queue[SessionInput] = field(default_factory=queue.Queue)
    events: collections.deque[tuple[int, OutEvent]] = field(default_factory=collections.deque)
    event_ready: asyncio.Event = field(default_factory=asyncio.Event)
    push_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pump: asyncio.Task[None] | None = None
    job_stream: Any = None
    runner: SessionRunner | None = None
    max_events: int = 4096
    input_rate: int = 16000

    @property
    def session_id(self) -> str:
        return self.spec.session_id

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def post(self, turn: int, event: OutEvent) -> None:
        if len(self.events) >= self.max_events:
            self.events.popleft()  # nobody is reading: keep the newest
        self.events.append((turn, event))
        self.event_ready.set()


class SessionManager:
    def __init__(self, runtime: ServiceRuntime, engine: OmniEngine, settings: OmniSettings):
        self._runtime = runtime
        self._engine = engine
        self._settings = settings
        self._sessions: dict[str, Session] = {}
        # id -> (when, why, turns, recording, owner)
        self._closed: dict[str, tuple[float, str, int, str, str]] = {}
        self._watchdog: asyncio.Task[None] | None = None

    # ---- open -----------------------------------------------------------------------------

    @property
    def open_count(self) -> int:
        return len(self._sessions)

    async def open(
        self,
        spec_args: dict[str, Any],
        mode: Mode,
        record: bool,
        input_rate: int,
        owner: str = "",
    ) -> Session:
        """Opens a session for `owner` (the caller's key id) and queues its job;
        RESOURCE_EXHAUSTED beyond max_sessions."""
        self._runtime.ensure_ready()
        if len(self._sessions) >= self._settings.max_sessions:
            raise ResourceExhausted(
                f"{len(self._sessions)} sessions are open, the limit is "
                f"{self._settings.max_sessions}; retry when one closes",
                self._runtime.executor.eta_for_kind(f"session_{mode.value}"),
            )
        session_id = str(uuid.uuid4())
        recorder = None
        if record:
            recorder = await self._runtime.run_cpu(self._new_recorder, session_id, mode)
        spec = SessionSpec(session_id=session_id, mode=mode, recorder=recorder, **spec_args)
        session = Session(
            spec=spec,
            kind=f"session_{mode.value}",
            owner=owner,
            max_events=self._settings.session_event_buffer,
            input_rate=input_rate,
        )
        runner = SessionRunner(self._engine, spec, session.inbox)
        session.runner = runner
        stream = self._runtime.stream_job(None, session.kind, runner.run)
        try:
            first = await anext(stream)  # submits: queue full or draining raise here
        except BaseException:
            if recorder is not None:
                recorder.close(turns=0, error="not started")
            raise
        if isinstance(first, tuple) and isinstance(first[1], Accepted):
            queued = first[1].queued
            if queued.position > 0:
                session.queued = QueueEvent(
                    queued.position, queued.queue_length, queued.eta_seconds
                )
                session.post(0, session.queued)
        session.job_stream = stream
        self._sessions[session_id] = session
        session.pump = asyncio.create_task(self._pump(session), name=f"session-{session_id}")
        self._ensure_watchdog()
        log.info("session %s opened (%s)", session_id, mode.value)
        return session

    def _new_recorder(self, session_id: str, mode: Mode) -> SessionRecorder:
        settings = self._settings
        root = settings.data_dir / "recordings"
        prune_recordings(root, settings.recordings_max_count - 1, settings.recordings_max_age_days)
        rate = self._engine.features().output_sample_rate
        return SessionRecorder(settings.data_dir, session_id, rate, {"mode": mode.value})

    async def _pump(self, session: Session) -> None:
        """Moves the session job's events into the session's buffer; closes it at the end."""
        reason = "session ended"
        try:
            async for _, event in session.job_stream:
                if isinstance(event, JobQueued):
                    session.queued = QueueEvent(
                        event.position, event.queue_length, event.eta_seconds
                    )
                    session.post(session.turn, session.queued)
                elif isinstance(event, JobOutput):
                    self._on_output(session, event.payload)
                elif isinstance(event, JobFinished):
                    break
        except JobCancelled as exc:
            reason = session.close_reason or exc.message
        except ServingError as exc:
            reason = session.close_reason or exc.message
        except asyncio.CancelledError:
            reason = session.close_reason or "server stopping"
        except Exception as exc:
            log.exception("session %s failed", session.session_id)
            reason = f"internal error: {type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await session.job_stream.aclose()
            self._finish(session, session.close_reason or reason)

    def _on_output(self, session: Session, payload: SessionEvent) -> None:
        if session.queued is not None:
            session.queued = None  # the first output means the job runs
        session.turn = payload.turn
        if isinstance(payload, ActivityChanged):
            session.activity = payload.activity
            if session.state is not State.PAUSED:
                # Keeps the public state; VAD notes are LISTENING changes with a reason.
                state = State(payload.activity.value)
                session.state = state
                session.post(payload.turn, StateEvent(state, payload.reason))
            return
        if isinstance(payload, TurnDone):
            # The runner announces LISTENING right after this; a pause taken in between must
            # resume to listening, not to the finished reply.
            session.activity = Activity.LISTENING
        session.post(payload.turn, payload)

    # ---- lookups and calls ----------------------------------------------------------------

    def get(self, session_id: str, owner: str = "") -> Session:
        """The open session `session_id` of `owner`. Another key's session, open or closed, is
        NOT_FOUND exactly like an unknown id: a leaked or guessed id gives no access and does
        not even confirm that the session exists."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner == owner:
            return session
        gone = self._closed.get(session_id)
        if session is None and gone is not None and gone[4] == owner:
            raise FailedPrecondition(f"session {session_id} is closed: {gone[1]}")
        raise NotFound(f"session {session_id} not found")

    def closed_info(self, session_id: str, owner: str = "") -> tuple[str, int, str] | None:
        gone = self._closed.get(session_id)
        if gone is None or gone[4] != owner:
            return None
        return gone[1], gone[2], gone[3]

    def push(self, session: Session, sequence: int, item: SessionInput | None, end: bool) -> None:
        """Takes one chunk (after decoding, under the session's push lock)."""
        if session.closed:
            raise FailedPrecondition(f"session {session.session_id} is closed")
        if session.inbox.qsize() >= _MAX_PENDING_INPUTS:
            raise ResourceExhausted("the session has too much unprocessed input", 1.0)
        if item is not None:
            session.inbox.put(item)
        if end:
            session.inbox.put(EndOfTurn())
        session.acked = sequence
        session.last_input = time.monotonic()

    def touch(self, session: Session) -> None:
        session.last_input = time.monotonic()

    def check_sequence(self, session: Session, sequence: int) -> bool:
        """False for a repeated chunk (ignored); FAILED_PRECONDITION for a gap or a paused or
        closed session."""
        if session.closed:
            raise FailedPrecondition(f"session {session.session_id} is closed")
        if session.state is State.PAUSED:
            raise FailedPrecondition(f"session {session.session_id} is paused; resume it first")
        if sequence <= session.acked:
            return False
        if sequence != session.acked + 1:
            raise FailedPrecondition(
                f"sequence {sequence} skips ahead: the next expected is {session.acked + 1}"
            )
        return True

    def pause(self, session: Session) -> State:
        if session.state is not State.PAUSED:
            session.state = State.PAUSED
            session.paused_at = time.monotonic()
            session.post(session.turn, StateEvent(State.PAUSED, "paused by client"))
        return session.state

    def resume(self, session: Session) -> State:
        if session.state is State.PAUSED:
            session.state = State(session.activity.value)
            session.paused_at = None
            session.last_input = time.monotonic()
            session.post(session.turn, StateEvent(session.state, "resumed by client"))
        return session.state

    async def close(self, session: Session, reason: str) -> None:
        """Ends the session: its job is cancelled (queued or running) and its stream ends."""
        if not session.close_reason:
            session.close_reason = reason
        if session.pump is not None and not session.pump.done():
            session.pump.cancel()  # the pump closes the job stream, which cancels the job
            with contextlib.suppress(asyncio.CancelledError):
                await session.pump
        else:
            self._finish(session, reason)
        await self._settle_recording(session)

    async def _settle_recording(self, session: Session) -> None:
        """A recording is complete when CloseSession returns: wait (bounded) for the runner to
        let go, or close it here when the session never reached the device."""
        recorder, runner = session.spec.recorder, session.runner
        if recorder is None or runner is None:
            return
        if runner.started:
            await asyncio.to_thread(runner.done.wait, _SETTLE_SECONDS)
        else:
            await self._runtime.run_cpu(recorder.close)

    def _finish(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.state = State.CLOSED
        session.close_reason = session.close_reason or reason
        recording = session.spec.recorder.relative_path if session.spec.recorder else ""
        self._sessions.pop(session.session_id, None)
        self._closed[session.session_id] = (
            time.monotonic(),
            session.close_reason,
            session.turn + (1 if session.activity is Activity.RESPONDING else 0),
            recording,
            session.owner,
        )
        session.post(session.turn, StateEvent(State.CLOSED, session.close_reason))
        log.info("session %s closed: %s", session.session_id, session.close_reason)

    # ---- readers --------------------------------------------------------------------------

    async def events(self, session: Session) -> AsyncIterator[tuple[int, OutEvent]]:
        """The session's events for one reader; a newer reader ends this one."""
        session.reader_token += 1
        token = session.reader_token
        session.readers += 1
        session.last_input = time.monotonic()
        try:
            note = "waiting for the device" if session.queued is not None else "current state"
            yield session.turn, StateEvent(session.state, note)
            if session.queued is not None:
                yield session.turn, session.queued
            last_sent = time.monotonic()
            heartbeat = self._settings.heartbeat_seconds
            while session.reader_token == token:
                if session.events:
                    turn, event = session.events.popleft()
                    yield turn, event
                    last_sent = time.monotonic()
                    if isinstance(event, StateEvent) and event.state is State.CLOSED:
                        return
                    continue
                if session.closed:
                    return
                session.event_ready.clear()
                wait = last_sent + heartbeat - time.monotonic()
                if wait <= 0:
                    elapsed = time.monotonic() - session.opened
                    yield session.turn, HeartbeatEvent(session.queued is not None, elapsed)
                    last_sent = time.monotonic()
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await session.event_ready.wait()
        finally:
            session.readers -= 1
            session.last_input = time.monotonic()

    # ---- timeouts -------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="session-watchdog")

    async def _watch(self) -> None:
        settings = self._settings
        while self._sessions:
            await asyncio.sleep(_WATCHDOG_SECONDS)
            now = time.monotonic()
            draining = self._runtime.state is ModelState.DRAINING
            for session in list(self._sessions.values()):
                reason = ""
                if draining:
                    reason = "server draining"
                elif (
                    session.paused_at is not None
                    and now - session.paused_at >= settings.session_pause_timeout_seconds
                ):
                    reason = "pause timeout"
                elif now - session.opened >= settings.session_max_duration_seconds:
                    reason = "max duration reached"
                elif (
                    session.readers == 0
                    and now - session.last_input >= settings.session_idle_timeout_seconds
                ):
                    reason = "idle timeout"
                if reason:
                    await self.close(session, reason)
            cutoff = now - _TOMBSTONE_SECONDS
            for session_id, (when, *_rest) in list(self._closed.items()):
                if when < cutoff:
                    del self._closed[session_id]

    async def shutdown(self) -> None:
        for session in list(self._sessions.values()):
            await self.close(session, "server stopping")
        if self._watchdog is not None:
            self._watchdog.cancel()
