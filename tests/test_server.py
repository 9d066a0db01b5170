import asyncio
import concurrent.futures
import http.client
import threading
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.protocol import ProtocolError, decode_request, packb, unpackb
from policies.remote import RemotePolicy, RemotePolicyError
from policies.server import PolicyServer

METADATA = {"observation_keys": ["image", "prompt", "state"], "state_dim": 4, "image_keys": ["image"]}


class EchoPolicy:
    """A numpy policy: the chunk holds the mean pixel and the state, so replies can be checked. The prompt
    "explode" fails it (and, batched, the whole batch); "sleep" makes it take 1.5 s."""

    metadata = {"action_dim": 4, "chunk_size": 2, "image_size": 16, "state_dim": 4, "control_hz": 10,
                "runtime": "numpy", "image_keys": ["image"], "observation_keys": ["image", "prompt", "state"],
                "action_hold": [0.0, 0.0, 0.0, None]}

    def reset(self):
        pass

    def act(self, observation):
        if observation["prompt"] == "sleep":
            time.sleep(1.5)
        row = np.append(observation["image"].mean() / 255.0, observation["state"][:3]).astype(np.float32)
        return np.stack([row, row])

    def act_batch(self, observations):
        if any(o["prompt"] == "explode" for o in observations):
            raise RuntimeError("the prompt is 300 tokens; the model takes at most 24")
        return np.stack([self.act(o) for o in observations])


def good_observation(i: int = 0) -> dict:
    return {"image": np.full((16, 16, 3), i, np.uint8), "state": np.arange(4, dtype=np.float32) + i,
            "prompt": "reach the red cube"}


class RunningServer:
    def __init__(self, policy=None, **kwargs):
        self.server = PolicyServer(policy or EchoPolicy(), **kwargs)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.server.port}"

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.stop = asyncio.Event()
        ready = asyncio.Event()

        async def main():
            task = asyncio.create_task(self.server.serve("127.0.0.1", 0, ready=ready, stop=self.stop))
            await ready.wait()
            self.ready.set()
            await task

        self.loop.run_until_complete(main())

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def server():
    running = RunningServer(api_key=None, max_message_bytes=64 * 1024)
    yield running
    running.close()


def test_round_trip_and_metadata(server):
    client = RemotePolicy(server.url)
    assert client.metadata["chunk_size"] == 2 and client.metadata["state_dim"] == 4
    reply = client.infer(good_observation(3))
    np.testing.assert_allclose(reply["actions"][0], [3 / 255, 3, 4, 5], rtol=1e-6)
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (2, 4)
    assert reply["server_timing"]["infer_ms"] >= 0
    client.close()


def test_healthz_answers_200(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


def test_bad_requests_get_errors_and_the_connection_keeps_serving(server):
    from websockets.sync.client import connect

    with connect(server.url) as ws:
        assert unpackb(ws.recv())["state_dim"] == 4  # metadata first
        ws.send(b"\xc1\xff not msgpack")
        assert "invalid msgpack" in ws.recv()
        ws.send(packb({"image": np.zeros((16, 16, 3), np.uint8), "prompt": "x"}))
        assert "missing key 'state'" in ws.recv()
        ws.send(packb({"front": np.zeros((16, 16, 3), np.uint8), "prompt": "x", "state": np.zeros(4, np.float32)}))
        assert "the policy takes ['image'], the request has ['front']" in ws.recv()
        ws.send(packb({**good_observation(), "image": np.zeros((16, 16, 3), np.float32)}))
        assert "uint8" in ws.recv()
        ws.send(packb({**good_observation(), "state": np.zeros(7, np.float32)}))
        assert "[4]" in ws.recv()
        ws.send(packb(good_observation(1)))  # still served
        assert unpackb(ws.recv())["actions"].shape == (2, 4)
    assert server.server.errors == 5


def test_one_bad_request_in_a_batch_fails_only_itself():
    running = RunningServer(batch_window_ms=300)  # the two requests below are answered as one batch
    try:
        clients = [RemotePolicy(running.url), RemotePolicy(running.url)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            good = pool.submit(clients[0].infer, good_observation(5))
            time.sleep(0.05)
            bad = pool.submit(clients[1].infer, {**good_observation(), "prompt": "explode"})
            reply = good.result(10)
            with pytest.raises(RemotePolicyError, match="300 tokens"):
                bad.result(10)
        assert reply["server_timing"]["batch_size"] == 2  # they did share a batch
        np.testing.assert_allclose(reply["actions"][0], [5 / 255, 5, 6, 7], rtol=1e-6)
        assert clients[1].act(good_observation(2))[0, 1] == 2.0  # the failed client is served next time
    finally:
        running.close()


def test_a_timed_out_request_never_returns_its_late_reply_as_the_next_answer(server):
    client = RemotePolicy(server.url, timeout_s=0.5)
    with pytest.raises(RemotePolicyError, match="no reply"):
        client.infer({**good_observation(9), "prompt": "sleep"})
    client.timeout_s = 5.0  # the server is still busy with the first request
    reply = client.infer(good_observation(3))  # a new connection; the late reply (9s) went to the old one
    np.testing.assert_allclose(reply["actions"][0], [3 / 255, 3, 4, 5], rtol=1e-6)


def test_oversized_message_is_refused_and_others_are_still_served(server):
    client = RemotePolicy(server.url)
    with pytest.raises(RemotePolicyError, match="over its limit"):
        client.infer({**good_observation(), "image": np.zeros((200, 200, 3), np.uint8)})
    other = RemotePolicy(server.url)
    assert other.act(good_observation()).shape == (2, 4)
    assert client.act(good_observation()).shape == (2, 4)  # reconnects


def test_api_key_is_required_when_configured():
    running = RunningServer(api_key="sesame")
    try:
        with pytest.raises(RemotePolicyError, match="401"):
            RemotePolicy(running.url, api_key="wrong", retries=0)
        with pytest.raises(RemotePolicyError, match="401"):
            RemotePolicy(running.url, retries=0)
        assert RemotePolicy(running.url, api_key="sesame").act(good_observation()).shape == (2, 4)
    finally:
        running.close()


def test_concurrent_clients_all_get_their_own_replies(server):
    def client_run(i):
        client = RemotePolicy(server.url)
        out = [client.act(good_observation(i))[0, 1] for _ in range(20)]
        client.close()
        return out

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(client_run, range(6)))
    for i, values in enumerate(results):
        assert values == [float(i)] * 20
    assert server.server.requests_served == 120


def test_unreachable_server_fails_after_backoff():
    with pytest.raises(RemotePolicyError, match="cannot reach"):
        RemotePolicy("ws://127.0.0.1:9", retries=1, backoff_s=0.01)


def test_sigterm_shuts_the_server_down_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys; sys.path.insert(0, 'tests');"
        "from test_server import EchoPolicy; from policies.server import serve;"
        "serve(EchoPolicy(), port=0)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.time() + 30
    line = ""
    while time.time() < deadline and "serving" not in line:
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "shutting down" in proc.stderr.read()


# ---------------------------------------------------------------- property-based: the decoder never crashes

VALID = packb(good_observation())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_decoder_handles_random_bytes(data):
    try:
        obs = decode_request(data, METADATA)
    except ProtocolError:
        return
    assert set(METADATA["observation_keys"]) <= set(obs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)))
def test_decoder_handles_mutated_messages(flips, cut):
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    try:
        obs = decode_request(bytes(data[:cut] if cut else data), METADATA)
    except ProtocolError:
        return
    assert obs["image"].dtype == np.uint8 and obs["state"].shape == (4,)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["image", "state", "prompt", "other"]),
                       st.one_of(st.none(), st.integers(-2**31, 2**31), st.text(max_size=5), st.binary(max_size=8),
                                 st.lists(st.floats(allow_nan=True), max_size=4))))
def test_decoder_handles_wrong_types(message):
    try:
        decode_request(msgpack.packb(message), METADATA)
    except ProtocolError:
        pass


def test_openpis_own_client_is_served():
    """openpi's WebsocketClientPolicy (the openpi-client package from PyPI), not our client."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    running = RunningServer(api_key="secret")
    try:
        client = WebsocketClientPolicy(running.url, api_key="secret")
        metadata = client.get_server_metadata()
        assert metadata["chunk_size"] == 2 and metadata["image_keys"] == ["image"]
        reply = client.infer(good_observation(4))
        assert reply["actions"].shape == (2, 4) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"][0], [4 / 255, 4, 5, 6], rtol=1e-6)
        with pytest.raises(RuntimeError, match="missing key 'state'"):  # errors come back as text frames
            client.infer({"image": np.zeros((16, 16, 3), np.uint8), "prompt": "reach"})
        assert client.infer(good_observation(1))["actions"].shape == (2, 4)  # and the connection still serves
    finally:
        running.close()
