"""`RemotePolicy`: the `Policy` protocol over a websocket to a policy server (openpi's protocol).

A request that gets no reply within `timeout_s` raises, and the connection is dropped: a reply that
arrives late can never be taken for the answer to the next request, which opens a new connection.

    policy = RemotePolicy("ws://gpu-box:8000", api_key="secret")
    actions = policy.act({"image": rgb, "state": state, "prompt": "reach the red cube"})   # [K, D]
"""

from __future__ import annotations

import time

import numpy as np

from policies.protocol import packb, unpackb


class RemotePolicyError(RuntimeError):
    """The server answered with an error, refused the connection, or could not be reached."""


class RemotePolicy:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0, retries: int = 5,
                 backoff_s: float = 0.2, max_backoff_s: float = 5.0):
        self.url = url
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._ws = None
        self.metadata: dict = {}
        self.last_server_timing: dict = {}
        self._connect()

    def _connect(self) -> None:
        """Connect, retrying with exponential backoff; the server's metadata arrives first."""
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        delay, last_error = self.backoff_s, None
        for attempt in range(self.retries + 1):
            try:
                self._ws = connect(self.url, additional_headers=headers, open_timeout=self.timeout_s,
                                   max_size=None, compression=None)
                self.metadata = {**unpackb(self._ws.recv(timeout=self.timeout_s)), "runtime": "remote", "url": self.url}
                return
            except InvalidStatus as err:  # the server refused us (wrong API key): retrying will not help
                body = err.response.body.decode(errors="replace").strip() if err.response.body else ""
                raise RemotePolicyError(f"{self.url} refused the connection: HTTP {err.response.status_code} {body}") from None
            except (OSError, TimeoutError) as err:
                last_error = err
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
        raise RemotePolicyError(f"cannot reach {self.url} after {self.retries + 1} attempts: {last_error}")

    def reset(self) -> None:
        """The server holds no per-episode state."""

    def infer(self, observation: dict) -> dict:
        """One round trip; returns the server's reply ({"actions", "server_timing"})."""
        from websockets.exceptions import ConnectionClosed

        payload = packb(observation)
        for attempt in range(2):
            try:
                if self._ws is None:
                    self._connect()
                self._ws.send(payload)
                reply = self._ws.recv(timeout=self.timeout_s)
                break
            except TimeoutError:
                # The reply may still come; on this socket it would answer the next request. Drop the
                # connection, so the next request gets a new one and its own reply.
                self._drop()
                raise RemotePolicyError(f"no reply from {self.url} within {self.timeout_s:g} s") from None
            except ConnectionClosed as err:
                self._ws = None
                code = err.rcvd.code if err.rcvd is not None else None
                if code == 1009:
                    raise RemotePolicyError(f"the server closed the connection: message of {len(payload)} bytes is "
                                            f"over its limit of {self.metadata.get('max_message_bytes')}") from None
                if attempt == 1:
                    raise RemotePolicyError(f"connection to {self.url} lost: {err}") from None
        if isinstance(reply, str):
            raise RemotePolicyError(f"server error: {reply}")
        result = unpackb(reply)
        self.last_server_timing = result.get("server_timing", {})
        return result

    def act(self, observation: dict) -> np.ndarray:
        return np.asarray(self.infer(observation)["actions"], np.float32)

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # closing a broken socket may fail; it is dropped either way
                pass

    def close(self) -> None:
        self._drop()
