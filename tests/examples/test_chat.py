"""examples/chat.py: WebSocket chat rooms with real `websockets` clients, on both loops."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import chat  # noqa: E402

pytestmark = pytest.mark.timeout(60)
ROOMS, PER_ROOM, MESSAGES = 5, 10, 5


async def recv_json(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def join(port: int, room: str):
    ws = await connect(f"ws://127.0.0.1:{port}/{room}", ping_interval=None)
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome" and welcome["room"] == room
    return ws, welcome["name"]


def test_rooms_receive_exactly_their_messages_in_order(loop):
    async def main() -> None:
        server = await chat.start()
        port = server.sockets[0].getsockname()[1]
        clients = [
            (room, *await join(port, f"room{room}"))
            for room in range(ROOMS)
            for _ in range(PER_ROOM)
        ]
        names = {name: room for room, _, name in clients}
        # Everyone hears the joins of those who came after them; wait for all of them so
        # the message phase starts with every member present.
        for i, (room, ws, _) in enumerate(clients):
            later = [n for r, _, n in clients[i + 1 :] if r == room]
            for expected in later:
                event = await recv_json(ws)
                assert event == {"type": "join", "name": expected}
        for _room, ws, name in clients:
            for n in range(MESSAGES):
                await ws.send(json.dumps({"n": n, "sender": name}))
        for room, ws, name in clients:
            got: dict[str, list[int]] = {}
            for _ in range((PER_ROOM - 1) * MESSAGES):
                event = await recv_json(ws)
                assert event["type"] == "message"
                assert names[event["from"]] == room  # never a message from another room
                assert event["from"] != name  # never its own
                got.setdefault(event["from"], []).append(event["data"]["n"])
            peers = {n for r, _, n in clients if r == room and n != name}
            assert set(got) == peers
            assert all(seq == list(range(MESSAGES)) for seq in got.values())  # in order
        for _, ws, _ in clients:
            await ws.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_dropped_client_is_announced_and_broadcast_goes_on(loop):
    async def main() -> None:
        server = await chat.start()
        port = server.sockets[0].getsockname()[1]
        a, a_name = await join(port, "r")
        b, b_name = await join(port, "r")
        c, c_name = await join(port, "r")
        assert await recv_json(a) == {"type": "join", "name": b_name}
        assert await recv_json(a) == {"type": "join", "name": c_name}
        assert await recv_json(b) == {"type": "join", "name": c_name}
        c.transport.abort()  # gone without a closing handshake
        assert await recv_json(a) == {"type": "leave", "name": c_name}
        assert await recv_json(b) == {"type": "leave", "name": c_name}
        await a.send(json.dumps("still here"))
        assert await recv_json(b) == {"type": "message", "from": a_name, "data": "still here"}
        await a.send("not json")
        assert (await recv_json(a))["type"] == "error"
        await a.close()
        await b.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_runs_as_a_program_on_ferroloop():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    example = Path(chat.__file__)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", str(example), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        banner = proc.stdout.readline().decode()
        assert "ferroloop" in banner

        async def talk() -> None:
            a, _ = await join(port, "x")
            b, b_name = await join(port, "x")
            assert await recv_json(a) == {"type": "join", "name": b_name}
            await b.send(json.dumps({"hi": 1}))
            assert (await recv_json(a))["data"] == {"hi": 1}
            await a.close()
            await b.close()

        asyncio.run(talk())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0
