"""WebSocket chat rooms (the `websockets` library).

    python -m ferroloop examples/chat.py --port 8765      # on ferroloop
    python examples/chat.py --port 8765                   # on stock asyncio

A client connects to ws://host:port/<room> and sends JSON messages; every message is
broadcast to the *other* members of the room as {"type": "message", "from": name, "data": ...}.
Joining and leaving are announced to the others as {"type": "join"|"leave", "name": ...}.
A client that drops without a closing handshake is removed and announced like any other,
and a send to a dead peer never stops a broadcast to the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from collections import defaultdict
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed


class Rooms:
    def __init__(self) -> None:
        self.members: dict[str, set[ServerConnection]] = defaultdict(set)
        self.names = (f"user{i}" for i in itertools.count(1))

    def broadcast(self, room: str, sender: ServerConnection | None, event: dict[str, Any]) -> None:
        """Send `event` to every member of `room` but the sender. `websockets.broadcast`
        writes to each open connection at once, in order, without waiting for slow peers
        and skipping dead ones: a dead peer never stops the others' copies."""
        peers = [peer for peer in self.members[room] if peer is not sender]
        broadcast(peers, json.dumps(event))

    async def handle(self, ws: ServerConnection) -> None:
        room = (ws.request.path if ws.request else "/").lstrip("/") or "lobby"
        name = next(self.names)
        self.members[room].add(ws)
        await ws.send(json.dumps({"type": "welcome", "name": name, "room": room}))
        self.broadcast(room, ws, {"type": "join", "name": name})
        try:
            async for raw in ws:
                try:
                    data = json.loads(raw)
                except ValueError:
                    await ws.send(json.dumps({"type": "error", "error": "invalid JSON"}))
                    continue
                self.broadcast(room, ws, {"type": "message", "from": name, "data": data})
        except ConnectionClosed:
            pass  # dropped without a closing handshake: same as a clean leave
        finally:
            self.members[room].discard(ws)
            if not self.members[room]:
                del self.members[room]
            self.broadcast(room, None, {"type": "leave", "name": name})


async def start(host: str = "127.0.0.1", port: int = 0) -> Server:
    rooms = Rooms()
    return await serve(rooms.handle, host, port, ping_interval=None)


async def main() -> None:
    ap = argparse.ArgumentParser(description="WebSocket chat rooms")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    server = await start(args.host, args.port)
    loop = type(asyncio.get_running_loop()).__module__
    print(f"chat on ws://{args.host}:{args.port}/<room> ({loop})", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
