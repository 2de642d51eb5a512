"""examples/crawler.py against a local aiohttp site of 200 generated pages with cycles, slow
pages, 404s and an external link, on both loops (client and site on the loop under test)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import crawler  # noqa: E402

pytestmark = pytest.mark.timeout(60)
PAGES, DEPTH, LIMIT, TIMEOUT = 200, 5, 8, 0.3


def is_slow(i: int) -> bool:
    return i % 17 == 5


def links(i: int) -> list[str]:
    children = [f"/page/{c}" if c < PAGES else f"/missing/{c}" for c in (2 * i + 1, 2 * i + 2)]
    # cycles (back to the root, to itself), fragments, and a link off the site
    return [*children, "/page/0#top", f"/page/{i}#self", "http://example.invalid/away"]


def build_site() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        if not 0 <= i < PAGES:
            raise web.HTTPNotFound()
        if is_slow(i):
            await asyncio.sleep(TIMEOUT * 5)
        body = "".join(f'<a href="{href}">x</a>' for href in links(i))
        html = f"<html><head><title> Page {i} </title></head><body>{body}</body></html>"
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page/{i}", page)
    return app


def expected(base: str) -> dict[str, tuple[int, str]]:
    """url -> (depth, outcome) by breadth-first search over the generated graph."""
    seen: dict[str, tuple[int, str]] = {}
    frontier = ["/page/0"]
    depth = 0
    seen["/page/0"] = (0, "ok")
    while frontier:
        nxt = []
        for path in frontier:
            if path.startswith("/missing") or is_slow(int(path.rsplit("/", 1)[1])):
                continue  # nothing to expand: 404 or timed out
            if depth >= DEPTH:
                continue
            for href in links(int(path.rsplit("/", 1)[1])):
                target = href.split("#")[0]
                if target.startswith("http") or target in seen:
                    continue
                outcome = (
                    "404"
                    if target.startswith("/missing")
                    else ("timeout" if is_slow(int(target.rsplit("/", 1)[1])) else "ok")
                )
                seen[target] = (depth + 1, outcome)
                nxt.append(target)
        frontier, depth = nxt, depth + 1
    return {base + path: v for path, v in seen.items()}


def test_crawl_exact_reachable_set(loop):
    async def main():
        runner = web.AppRunner(build_site())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            result = await crawler.crawl(
                base + "/page/0", max_depth=DEPTH, concurrency=LIMIT, timeout=TIMEOUT
            )
        finally:
            await runner.cleanup()
        return base, result

    base, result = loop.run_until_complete(main())
    want = expected(base)
    assert set(result.pages) == set(want)  # exactly the reachable pages, each once
    for url, page in result.pages.items():
        depth, outcome = want[url]
        assert page.depth == depth, url
        if outcome == "ok":
            assert page.status == 200 and page.title == f"Page {url.rsplit('/', 1)[1]}"
        elif outcome == "404":
            assert page.status == 404
        else:
            assert page.error == "timeout"
    assert 1 < result.max_in_flight <= LIMIT
    assert any(p.error == "timeout" for p in result.pages.values())


def test_runs_as_a_program_on_ferroloop(tmp_path):
    """`python -m ferroloop examples/crawler.py URL` against a site served by stock asyncio in a
    separate process."""
    server_code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_crawler import build_site\n"
        "from aiohttp import web\n"
        "web.run_app(build_site(), host='127.0.0.1', port=int(sys.argv[1]), print=None)\n"
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "site.py"
    script.write_text(server_code)
    site = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                import time

                time.sleep(0.1)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ferroloop",
                crawler.__file__,
                f"http://127.0.0.1:{port}/page/0",
                "--depth",
                "2",
                "--timeout",
                "0.3",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        site.terminate()
        site.wait(10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("7 pages")
