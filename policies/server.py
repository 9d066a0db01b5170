"""A websocket policy server speaking openpi's protocol (see `policies.protocol`).

    server = PolicyServer(policy, api_key="secret")
    asyncio.run(server.serve("0.0.0.0", 8000))     # or: vla serve EXPORT_DIR --port 8000

Requests from all connections go through one queue; a single inference thread answers whatever
has queued up (waiting up to `batch_window_ms` for more) in one batched call, so concurrent
clients share the accelerator instead of contending for it. Each request is validated on its own
when it arrives, and a batch that fails is answered request by request, so one bad request never
fails another client's. A bad request gets a text frame naming the problem and the connection stays open; `/healthz` answers 200; SIGTERM and SIGINT
close the listener and let requests in flight finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import signal
import time
from dataclasses import dataclass

import numpy as np

from policies.base import Policy, act_batch
from policies.protocol import ProtocolError, decode_request, packb

logger = logging.getLogger("vla.server")


@dataclass
class _Request:
    observation: dict
    future: asyncio.Future
    received: float


class PolicyServer:
    def __init__(self, policy: Policy, api_key: str | None = None, max_message_bytes: int = 16 * 1024 * 1024,
                 batch_window_ms: float = 0.0, max_batch: int = 32):
        self.policy = policy
        self.api_key = api_key
        self.max_message_bytes = max_message_bytes
        self.batch_window = batch_window_ms / 1000.0
        self.max_batch = max_batch
        # The policy's own metadata (policies.spec.PolicySpec.metadata): cameras, state, action space.
        self.metadata = {**policy.metadata, "max_message_bytes": max_message_bytes}
        self.requests_served = 0
        self.errors = 0
        self._queue: asyncio.Queue[_Request] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    # ------------------------------------------------------------------ HTTP side
    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if given != f"Api-Key {self.api_key}":
                logger.warning("refused %s: %s API key", connection.remote_address, "wrong" if given else "missing")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid or missing API key\n")
        return None

    # ------------------------------------------------------------------ websocket side
    async def _handle(self, websocket) -> None:
        import websockets

        peer = websocket.remote_address
        await websocket.send(packb(self.metadata))
        try:
            async for message in websocket:
                try:
                    observation = decode_request(message, self.metadata)
                except ProtocolError as err:
                    self.errors += 1
                    logger.warning("bad request from %s: %s", peer, err)
                    await websocket.send(f"bad request: {err}")
                    continue
                future = asyncio.get_running_loop().create_future()
                await self._queue.put(_Request(observation, future, time.perf_counter()))
                try:
                    reply = await future
                except Exception as err:  # the policy failed on this request; others go on
                    self.errors += 1
                    logger.error("inference failed for %s: %s", peer, err)
                    await websocket.send(f"inference failed: {type(err).__name__}: {err}")
                    continue
                await websocket.send(packb(reply))
        except websockets.ConnectionClosed as err:
            if err.rcvd is not None and err.rcvd.code == 1009 or err.sent is not None and err.sent.code == 1009:
                self.errors += 1
                logger.warning("closed %s: message over %d bytes", peer, self.max_message_bytes)

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = time.perf_counter() + self.batch_window
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    batch.append(self._queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            start = time.perf_counter()
            results = await loop.run_in_executor(self._pool, self._infer, batch)
            infer_ms = 1000 * (time.perf_counter() - start)
            for request, result in zip(batch, results):
                if request.future.done():
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                    continue
                request.future.set_result({
                    "actions": np.asarray(result, np.float32),
                    "server_timing": {"infer_ms": infer_ms, "batch_size": len(batch),
                                      "queue_ms": 1000 * (start - request.received)},
                })
                self.requests_served += 1

    def _infer(self, batch: list[_Request]) -> list:
        """One chunk (or the exception) per request: the whole batch in one call, or, if that fails,
        each request on its own, so that only the requests at fault get an error."""
        try:
            return list(act_batch(self.policy, [r.observation for r in batch]))
        except Exception as err:
            if len(batch) == 1:
                return [err]
        results = []
        for request in batch:
            try:
                results.append(act_batch(self.policy, [request.observation])[0])
            except Exception as err:
                results.append(err)
        return results

    async def serve(self, host: str = "127.0.0.1", port: int = 8000, ready: asyncio.Event | None = None,
                    stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, or SIGTERM / SIGINT arrives (in the main thread)."""
        from websockets.asyncio.server import serve

        self._queue = asyncio.Queue()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # not the main thread (tests): rely on `stop`
        batcher = asyncio.create_task(self._batcher())
        async with serve(self._handle, host, port, process_request=self._process_request,
                         max_size=self.max_message_bytes, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            logger.info("serving %s on ws://%s:%d", self.metadata.get("runtime"), host, self.port)
            if ready is not None:
                ready.set()
            await stop.wait()
            logger.info("shutting down after %d requests (%d errors)", self.requests_served, self.errors)
        batcher.cancel()
        self._pool.shutdown(wait=True)


def serve(policy: Policy, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_message_bytes: int = 16 * 1024 * 1024, batch_window_ms: float = 0.0) -> None:
    """Blocking entry point for `vla serve`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = PolicyServer(policy, api_key=api_key, max_message_bytes=max_message_bytes, batch_window_ms=batch_window_ms)
    asyncio.run(server.serve(host, port))
