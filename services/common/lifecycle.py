"""The app shape both services share, and the supervision of their long-lived parts.

Each service enters its parts (store, broker link, consumer or relay, clients) into the lifespan's
``AsyncExitStack`` in dependency order, so that they leave in reverse: the consumer drains over a live
connection before the link closes it, and the store closes only once nothing can call it. Background tasks run
under a ``Supervisor``: a task that dies is logged with its traceback and makes the service unready, and one that
cannot recover asks the process to exit non-zero (Kubernetes restarts it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self

import structlog
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from services.common.observability import metrics_endpoint

log = structlog.get_logger(__name__)

OnFatal = Callable[[BaseException], None]
TEST_FAULTS_ENV = "DURABLE_CHAT_TEST_FAULTS"


class Unrecoverable(Exception):
    """A part gave up: the process should exit so that its supervisor (Kubernetes) starts a fresh one."""


class InjectedFault(Exception):
    """Raised at a fault point named in ``DURABLE_CHAT_TEST_FAULTS`` (tests only)."""


class Faults:
    """Faults a test injects into a real process. Off unless ``DURABLE_CHAT_TEST_FAULTS`` is set.

    The value is comma-separated ``point=value`` pairs: ``history.drain.crash=2`` raises ``InjectedFault`` in the
    history drain loop for its next 2 batches (``-1``: always), ``history.write.delay_s=0.5`` makes every LevelDB
    batch write sleep first, like a slow disk. Real deployments never set it; the service warns when it is set.
    """

    def __init__(self, spec: str = "") -> None:
        self._values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, value = item.partition("=")
            self._values[point.strip()] = float(value)

    @classmethod
    def from_env(cls) -> Faults:
        faults = cls(os.environ.get(TEST_FAULTS_ENV, ""))
        if faults._values:
            log.warning("test faults injected: never set this in a deployment", faults=faults._values)
        return faults

    def crash(self, point: str) -> None:
        remaining = self._values.get(f"{point}.crash", 0)
        if remaining == 0:
            return
        if remaining > 0:
            self._values[f"{point}.crash"] = remaining - 1
        raise InjectedFault(f"injected fault at {point}")

    def delay_s(self, point: str) -> float:
        return self._values.get(f"{point}.delay_s", 0.0)


class Supervisor:
    """Owns a service's top-level background tasks; a task ending in an exception is fatal for the process.

    Parts that can recover from a crash of their own tasks do so themselves (the broker link reconnects and
    rebuilds them); what reaches here is a part that gave up, or a bug in the recovery itself.
    """

    def __init__(self, name: str, on_fatal: OnFatal | None = None) -> None:
        self._name = name
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[None]] = set()
        self.failure: str | None = None

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def fail(self, what: str, exc: BaseException) -> None:
        """Record a failure the service cannot recover from: unready from now on, and the process exits."""
        if self.failure is None:
            self.failure = what
        log.error("unrecoverable failure; the process will exit", part=what, service=self._name, exc_info=exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(task.get_name(), exc)

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Every part has stopped its own tasks by now (the stack unwinds them first); these are leftovers.
        tasks = list(self._tasks)
        for task in tasks:
            log.warning("background task still running at shutdown; cancelled", task=task.get_name())
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait; a task that already crashed does not raise here (its supervisor reported it)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


async def stop_within(task: asyncio.Task[None], timeout_s: float, what: str) -> bool:
    """Wait for a task told to finish its work; cancel it only past ``timeout_s``. True if it finished."""
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if done:
        return True
    log.warning("did not finish in time; cancelled", part=what, timeout_s=timeout_s)
    await cancel_and_wait([task])
    return False


class _Metrics(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class ServiceLike(Protocol):
    @property
    def metrics(self) -> _Metrics: ...

    async def open(self, stack: AsyncExitStack, on_fatal: OnFatal | None = None) -> None: ...


class StackOwner:
    """A service whose ``open(stack)`` enters its parts into the lifespan's exit stack; used on its own (tests,
    tools) as ``async with``, it owns a stack of its own."""

    _stack: AsyncExitStack | None = None

    async def open(self, stack: AsyncExitStack, on_fatal: OnFatal | None = None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await self.open(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


def build_app(
    service: ServiceLike,
    routes: Sequence[BaseRoute],
    serve_metrics: bool,
    last_routes: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
) -> Starlette:
    """An app whose lifespan opens ``service``'s parts and closes them in reverse; ``/metrics`` here unless it
    has its own port. ``app.state.on_fatal``, when the runner sets it, is how a part that gave up stops the process.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await service.open(stack, getattr(app.state, "on_fatal", None))
            yield {"service": service}

    all_routes = list(routes)
    if serve_metrics:
        all_routes.append(Route("/metrics", metrics_endpoint(service.metrics.registry)))
    app = Starlette(routes=[*all_routes, *last_routes], lifespan=lifespan, middleware=list(middleware))
    app.state.service = service
    return app
