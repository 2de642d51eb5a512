"""Async web crawler (aiohttp client).

    python -m ferroloop examples/crawler.py http://127.0.0.1:8080/ --depth 2
    python examples/crawler.py URL [--depth N] [--concurrency N] [--timeout S]

Breadth-first from a start URL: same-domain links only, fragments stripped, each page fetched
once (a visited set), at most `concurrency` requests in flight (a semaphore), a per-request
timeout (a slow page is recorded as timed out and the crawl goes on), the page title
extracted. Prints one line per page.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp


class _LinksAndTitle(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.extend(v for k, v in attrs if k == "href" and v)
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


@dataclass
class Page:
    url: str
    depth: int
    status: int | None = None  # None: timed out or failed
    title: str = ""
    error: str = ""


@dataclass
class Crawl:
    pages: dict[str, Page] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0


def normalize(base: str, href: str) -> str:
    return urldefrag(urljoin(base, href))[0]


async def crawl(
    start: str, *, max_depth: int = 2, concurrency: int = 10, timeout: float = 2.0
) -> Crawl:
    result = Crawl()
    domain = urlsplit(start).netloc
    limit = asyncio.Semaphore(concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def fetch(session: aiohttp.ClientSession, page: Page) -> list[str]:
        async with limit:
            result.in_flight += 1
            result.max_in_flight = max(result.max_in_flight, result.in_flight)
            try:
                async with session.get(page.url, timeout=client_timeout) as resp:
                    page.status = resp.status
                    if resp.status != 200 or "html" not in resp.content_type:
                        return []
                    parser = _LinksAndTitle()
                    parser.feed(await resp.text())
                    page.title = re.sub(r"\s+", " ", parser.title).strip()
                    return [normalize(page.url, href) for href in parser.links]
            except TimeoutError:
                page.error = "timeout"
            except aiohttp.ClientError as exc:
                page.error = type(exc).__name__
            finally:
                result.in_flight -= 1
            return []

    start = normalize(start, "")
    frontier = [Page(start, 0)]
    result.pages[start] = frontier[0]
    async with aiohttp.ClientSession() as session:
        while frontier:
            links = await asyncio.gather(*(fetch(session, p) for p in frontier))
            next_frontier = []
            for page, found in zip(frontier, links, strict=True):
                if page.depth >= max_depth:
                    continue
                for url in found:
                    if urlsplit(url).netloc == domain and url not in result.pages:
                        child = Page(url, page.depth + 1)
                        result.pages[url] = child
                        next_frontier.append(child)
            frontier = next_frontier
    return result


async def main() -> None:
    ap = argparse.ArgumentParser(description="async web crawler")
    ap.add_argument("url")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    result = await crawl(
        args.url, max_depth=args.depth, concurrency=args.concurrency, timeout=args.timeout
    )
    for page in sorted(result.pages.values(), key=lambda p: (p.depth, p.url)):
        print(f"{page.depth} {page.status or page.error:>7} {page.url} {page.title!r}")
    print(f"{len(result.pages)} pages, at most {result.max_in_flight} requests in flight")


if __name__ == "__main__":
    asyncio.run(main())
