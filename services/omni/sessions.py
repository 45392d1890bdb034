"""The loop side of live sessions: opening (max sessions), input with sequence numbers, the one
event stream per session, the turns, pause/resume/close, and the pause, idle, orphan and
max-duration timeouts.

A session takes the device only while it computes: pushed input goes through the session's
`Listener` (VAD on the CPU pool) and each complete user turn becomes one executor job
(`TurnRunner.run`), queued like any job, so Chat calls and other sessions run between turns.
A turn that waits reports its queue position and ETA in the session's events; a session runs
its turns one at a time, in order. Events (the jobs' outputs and the manager's own) wait in a
bounded buffer until a reader takes them. Closed sessions are remembered for a while so late
calls learn why they ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine
from services.omni.recordings import SessionRecorder, prune_recordings
from services.omni.session_listener import (
    BargeIn,
    Listener,
    ListenerAction,
    SpeechPaused,
    SpeechResumed,
    TurnReady,
    VadNote,
)
from services.omni.session_runner import (
    Activity,
    ActivityChanged,
    Mode,
    SessionEvent,
    SessionInput,
    SessionSpec,
    TurnDone,
    TurnOutcome,
    TurnRunner,
    UserTurn,
)
from services.runtime.app import ModelState, ServiceRuntime
from services.runtime.chat.messages import FinishReason
from services.runtime.errors import FailedPrecondition, NotFound, ResourceExhausted, ServingError
from services.runtime.executor import (
    JobFailed,
    JobFinished,
    JobHandle,
    JobOutput,
    JobQueued,
    JobStarted,
)

log = logging.getLogger("mmserve.omni")

_WATCHDOG_SECONDS = 0.25
_TOMBSTONE_SECONDS = 600.0
_SETTLE_SECONDS = 10.0
# A turn whose job has not started this long after it was queued reports its queue position:
# a job that starts at once (the device was free) is not worth a queue event.
_QUEUE_NOTE_SECONDS = 0.05


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
class _Turn:
    """The turn job in flight: its handle, and the barge-in flags (device and loop side)."""

    number: int
    handle: JobHandle | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    barged: asyncio.Event = field(default_factory=asyncio.Event)
    queue_timer: asyncio.TimerHandle | None = None


@dataclass
class Session:
    spec: SessionSpec
    kind: str  # the job kind of its turns
    # The API key id that opened it ("" with auth off): only that key may use it.
    owner: str = ""
    opened: float = field(default_factory=time.monotonic)
    state: State = State.LISTENING
    activity: Activity = Activity.LISTENING
    queued: QueueEvent | None = None  # set while a turn waits for the device
    acked: int = -1
    turn: int = 0
    last_input: float = field(default_factory=time.monotonic)
    paused_at: float | None = None
    readers: int = 0
    reader_token: int = 0
    close_reason: str = ""
    events: collections.deque[tuple[int, OutEvent]] = field(default_factory=collections.deque)
    event_ready: asyncio.Event = field(default_factory=asyncio.Event)
    push_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    listener: Listener | None = None
    runner: TurnRunner | None = None
    ready: collections.deque[UserTurn] = field(default_factory=collections.deque)
    worker: asyncio.Task[None] | None = None
    current: _Turn | None = None
    early: JobHandle | None = None  # the early transcription job (see TurnRunner)
    max_events: int = 4096
    input_rate: int = 16000

    @property
    def session_id(self) -> str:
        return self.spec.session_id

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def busy(self) -> bool:
        """A turn is queued or running (or waits for the one before it)."""
        return self.current is not None or bool(self.ready)

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
        """Opens a session for `owner` (the caller's key id); RESOURCE_EXHAUSTED beyond
        max_sessions. Nothing is queued until the first user turn is complete."""
        self._runtime.ensure_ready()
        if len(self._sessions) >= self._settings.max_sessions:
            raise ResourceExhausted(
                f"{len(self._sessions)} sessions are open, the limit is "
                f"{self._settings.max_sessions}; retry when one closes",
                1.0,
            )
        session_id = str(uuid.uuid4())
        recorder = None
        if record:
            recorder = await self._runtime.run_cpu(self._new_recorder, session_id, mode, owner)
        spec = SessionSpec(session_id=session_id, mode=mode, recorder=recorder, **spec_args)
        session = Session(
            spec=spec,
            kind="session_turn_speech" if spec.speech.enabled else "session_turn",
            owner=owner,
            max_events=self._settings.session_event_buffer,
            input_rate=input_rate,
        )
        vad = self._engine.new_vad() if mode.uses_vad else None
        session.listener = Listener(mode, vad, spec.max_images, recorder)
        session.runner = TurnRunner(self._engine, spec)
        self._sessions[session_id] = session
        self._on_output(session, ActivityChanged(0, Activity.LISTENING, "session started"))
        self._ensure_watchdog()
        log.info("session %s opened (%s)", session_id, mode.value)
        return session

    def _new_recorder(self, session_id: str, mode: Mode, owner: str) -> SessionRecorder:
        settings = self._settings
        root = settings.data_dir / "recordings"
        prune_recordings(root, settings.recordings_max_count - 1, settings.recordings_max_age_days)
        rate = self._engine.features().output_sample_rate
        meta = {"mode": mode.value, "owner": owner}
        return SessionRecorder(settings.data_dir, session_id, rate, meta)

    def _on_output(self, session: Session, payload: SessionEvent) -> None:
        session.turn = max(session.turn, payload.turn)
        if isinstance(payload, ActivityChanged):
            session.activity = payload.activity
            if session.state is not State.PAUSED:
                # Keeps the public state; VAD notes are LISTENING changes with a reason.
                state = State(payload.activity.value)
                session.state = state
                session.post(payload.turn, StateEvent(state, payload.reason))
            return
        if isinstance(payload, TurnDone):
            # LISTENING is announced right after this; a pause taken in between must resume
            # to listening, not to the finished reply.
            session.activity = Activity.LISTENING
        session.post(payload.turn, payload)

    # ---- input ----------------------------------------------------------------------------

    async def push(
        self, session: Session, sequence: int, item: SessionInput | None, end: bool
    ) -> None:
        """Takes one chunk (after decoding, under the session's push lock): VAD runs on the
        CPU pool; a complete user turn is queued."""
        if session.closed:
            raise FailedPrecondition(f"session {session.session_id} is closed")
        listener = session.listener
        assert listener is not None
        actions = await self._runtime.run_cpu(listener.feed, item, end)
        session.acked = sequence
        session.last_input = time.monotonic()
        self._act(session, actions)

    def _act(self, session: Session, actions: list[ListenerAction]) -> None:
        for action in actions:
            if session.closed:
                return
            if isinstance(action, VadNote):
                self._on_output(
                    session, ActivityChanged(session.turn, Activity.LISTENING, action.reason)
                )
            elif isinstance(action, BargeIn):
                if session.current is not None:
                    session.current.stop.set()
                    session.current.barged.set()
            elif isinstance(action, SpeechPaused | SpeechResumed):
                self._early(session, action)
            elif isinstance(action, TurnReady):
                session.ready.append(action.user)
                if session.worker is None or session.worker.done():
                    session.worker = asyncio.create_task(
                        self._turns(session), name=f"session-{session.session_id}"
                    )

    def _early(self, session: Session, action: SpeechPaused | SpeechResumed) -> None:
        """Starts transcribing a paused utterance while the VAD waits out its silence window;
        speech that resumes cancels it (a job already running just goes unused)."""
        if session.early is not None:
            session.early.cancel("speech resumed")
            session.early = None
        runner = session.runner
        if not isinstance(action, SpeechPaused) or runner is None or session.busy:
            return
        engine = self._engine
        if not self._settings.session_early_asr or engine.traits.audio_input or not engine.asr:
            return
        work = functools.partial(runner.transcribe_early, samples=action.audio)
        with contextlib.suppress(ServingError):  # a full queue: the turn transcribes itself
            session.early = self._runtime.executor.submit("session_asr", work, owner=session.owner)

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

    # ---- turns ----------------------------------------------------------------------------

    async def _turns(self, session: Session) -> None:
        """Runs the session's complete user turns one after another."""
        while session.ready and not session.closed:
            user = session.ready.popleft()
            turn = _Turn(session.turn)
            session.current = turn
            try:
                outcome = await self._run_turn(session, turn, user)
                if outcome is not None and outcome.replied and not session.closed:
                    await self._finish_turn(session, turn, outcome)
            finally:
                self._end_job(session)
            if session.closed:
                return
            session.last_input = time.monotonic()  # a turn is activity (idle timeout)
            async with session.push_lock:
                listener = session.listener
                assert listener is not None
                actions = listener.reply_ended()
                if session.ready:
                    listener.replying = True
                self._act(session, actions)

    async def _run_turn(self, session: Session, turn: _Turn, user: UserTurn) -> TurnOutcome | None:
        """Queues the turn's job and relays its events; None when it did not complete."""
        runner = session.runner
        assert runner is not None
        work = functools.partial(runner.run, turn=turn.number, user=user, stop=turn.stop)
        try:
            turn.handle = self._runtime.executor.submit(session.kind, work, owner=session.owner)
        except ServingError as exc:
            self._on_output(
                session,
                ActivityChanged(turn.number, Activity.LISTENING, f"turn dropped: {exc.message}"),
            )
            return None
        async for event in turn.handle.events():
            if isinstance(event, JobQueued):
                self._queued(session, turn, event)
            elif isinstance(event, JobStarted):
                self._started(session, turn)
            elif isinstance(event, JobOutput):
                self._on_output(session, event.payload)
            elif isinstance(event, JobFinished):
                outcome: TurnOutcome = event.result
                return outcome
            elif isinstance(event, JobFailed):
                self._started(session, turn)
                if not session.closed:
                    log.warning("session %s turn failed: %s", session.session_id, event.error)
                    reason = getattr(event.error, "message", type(event.error).__name__)
                    self._on_output(
                        session,
                        ActivityChanged(turn.number, Activity.LISTENING, f"turn failed: {reason}"),
                    )
                return None
        return None

    def _queued(self, session: Session, turn: _Turn, event: JobQueued) -> None:
        note = QueueEvent(event.position, event.queue_length, event.eta_seconds)
        posted = session.queued is not None and turn.queue_timer is None
        session.queued = note
        if posted:
            session.post(turn.number, note)  # a new position while the turn waits
        elif turn.queue_timer is None:
            loop = asyncio.get_running_loop()
            turn.queue_timer = loop.call_later(
                _QUEUE_NOTE_SECONDS, self._post_queued, session, turn
            )

    def _post_queued(self, session: Session, turn: _Turn) -> None:
        turn.queue_timer = None
        if session.current is turn and session.queued is not None and not session.closed:
            session.post(turn.number, session.queued)

    def _started(self, session: Session, turn: _Turn) -> None:
        session.queued = None
        if turn.queue_timer is not None:
            turn.queue_timer.cancel()
            turn.queue_timer = None

    def _end_job(self, session: Session) -> None:
        if session.early is not None and session.closed:
            session.early.cancel("session closed")
        turn = session.current
        if turn is not None:
            self._started(session, turn)
            if turn.handle is not None:
                turn.handle.cancel("session closed")  # no-op once the job ended
        session.current = None

    async def _finish_turn(self, session: Session, turn: _Turn, outcome: TurnOutcome) -> None:
        """Duplex: the client still plays the reply until its speech ends; user speech
        meanwhile barges in. Then the turn is done and the session listens again."""
        finish = outcome.finish
        if (
            finish is not FinishReason.CANCELLED
            and session.spec.mode.duplex
            and outcome.first_audio is not None
        ):
            remaining = outcome.first_audio + outcome.audio_seconds - time.monotonic()
            if remaining > 0 and not turn.barged.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await turn.barged.wait()
            if turn.barged.is_set():
                finish = FinishReason.CANCELLED
        self._on_output(
            session,
            TurnDone(
                turn.number,
                finish,
                outcome.input_tokens,
                outcome.output_tokens,
                outcome.run_seconds,
            ),
        )
        reason = "barge-in" if finish is FinishReason.CANCELLED else "turn completed"
        self._on_output(session, ActivityChanged(turn.number + 1, Activity.LISTENING, reason))

    # ---- lookups, pause, close ------------------------------------------------------------

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
        """Ends the session: its turn job is cancelled (queued or running), its stream ends,
        and its recording is complete when this returns."""
        if not session.close_reason:
            session.close_reason = reason
        self._finish(session, reason)
        worker = session.worker
        if worker is not None and not worker.done() and worker is not asyncio.current_task():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._end_job(session)
        await self._settle_recording(session)

    async def _settle_recording(self, session: Session) -> None:
        """Closes the recording once no turn function writes to it (bounded wait) and no push
        feeds it."""
        recorder, runner = session.spec.recorder, session.runner
        if recorder is None:
            return
        if runner is not None and not runner.idle.is_set():
            await asyncio.to_thread(runner.idle.wait, _SETTLE_SECONDS)
        async with session.push_lock:
            await self._runtime.run_cpu(
                functools.partial(recorder.close, turns=session.turn, mode=session.spec.mode.value)
            )

    def _finish(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        turns = session.turn + (1 if session.activity is Activity.RESPONDING else 0)
        session.state = State.CLOSED
        session.close_reason = session.close_reason or reason
        recording = session.spec.recorder.relative_path if session.spec.recorder else ""
        self._sessions.pop(session.session_id, None)
        self._closed[session.session_id] = (
            time.monotonic(),
            session.close_reason,
            turns,
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

    def _expired(self, session: Session, now: float) -> str:
        """Why the session must close now, or ""."""
        settings = self._settings
        quiet = now - session.last_input
        if session.paused_at is not None:
            if now - session.paused_at >= settings.session_pause_timeout_seconds:
                return "pause timeout"
        elif session.readers == 0 and quiet >= settings.session_orphan_timeout_seconds:
            # Its client went away (a killed process, a closed tab) without closing it.
            return "orphaned: no reader and no input"
        if now - session.opened >= settings.session_max_duration_seconds:
            return "max duration reached"
        if (
            session.readers == 0
            and not session.busy
            and quiet >= settings.session_idle_timeout_seconds
        ):
            return "idle timeout"
        return ""

    async def _watch(self) -> None:
        while self._sessions:
            await asyncio.sleep(_WATCHDOG_SECONDS)
            now = time.monotonic()
            draining = self._runtime.state is ModelState.DRAINING
            for session in list(self._sessions.values()):
                reason = "server draining" if draining else self._expired(session, now)
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
