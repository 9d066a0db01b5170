"""Load test of the policy server on loopback: N concurrent clients x M requests each.

    python benchmarks/server_load.py EXPORT_DIR [--clients 8] [--requests 500]

Starts `vla serve`-equivalent in this process (its own event loop thread), runs the clients in
threads, and prints failed/lost replies and round-trip p50/p99 beside the in-process latency of
the same policy.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import threading
import time

import numpy as np

from policies.onnx_policy import OnnxPolicy
from policies.remote import RemotePolicy
from policies.server import PolicyServer


def start_server(policy, batch_window_ms: float) -> tuple[PolicyServer, threading.Thread, asyncio.AbstractEventLoop, asyncio.Event]:
    server = PolicyServer(policy, batch_window_ms=batch_window_ms)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    def run():
        asyncio.set_event_loop(loop)
        holder["stop"] = asyncio.Event()
        ready = asyncio.Event()

        async def main():
            task = asyncio.create_task(server.serve("127.0.0.1", 0, ready=ready, stop=holder["stop"]))
            await ready.wait()
            started.set()
            await task

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    return server, thread, loop, holder["stop"]


def observation(meta: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    size = meta["image_size"]
    obs = {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "prompt": "reach the red cube"}
    if meta.get("state_dim"):
        obs["state"] = rng.normal(size=meta["state_dim"]).astype(np.float32)
    return obs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batch-window-ms", type=float, default=0.0)
    args = parser.parse_args()

    policy = OnnxPolicy(args.export_dir, device="auto")
    obs = observation(policy.metadata, 0)
    in_process = []
    for _ in range(200):
        start = time.perf_counter()
        policy.act(obs)
        in_process.append(1000 * (time.perf_counter() - start))

    server, thread, loop, stop = start_server(policy, args.batch_window_ms)
    url = f"ws://127.0.0.1:{server.port}"

    def client(i: int):
        remote = RemotePolicy(url)
        times, failed = [], 0
        request = observation(remote.metadata, i)
        for _ in range(args.requests):
            start = time.perf_counter()
            try:
                actions = remote.act(request)
                if actions.shape != (remote.metadata["chunk_size"], remote.metadata["action_dim"]):
                    failed += 1
            except Exception:
                failed += 1
            times.append(1000 * (time.perf_counter() - start))
        remote.close()
        return times, failed

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - start
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)

    times = np.concatenate([r[0] for r in results])
    failed = sum(r[1] for r in results)
    total = args.clients * args.requests
    print(f"{'path':28s} {'requests':>9s} {'failed':>7s} {'lost':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s}")
    print(f"{'in-process OnnxPolicy':28s} {len(in_process):9d} {0:7d} {0:5d} {np.percentile(in_process, 50):8.2f} "
          f"{np.percentile(in_process, 99):8.2f} {1000 / np.mean(in_process):8.1f}")
    lost = total - server.requests_served
    print(f"{f'server, {args.clients} clients (loopback)':28s} {total:9d} {failed:7d} {lost:5d} {np.percentile(times, 50):8.2f} "
          f"{np.percentile(times, 99):8.2f} {total / wall:8.1f}")
    print(f"({policy.device_description}; batch window {args.batch_window_ms} ms)", file=sys.stderr)


if __name__ == "__main__":
    main()
