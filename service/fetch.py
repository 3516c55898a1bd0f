"""URL ingestion: download an `input.url` into the input store.

Where it runs: in the gateway, at submit time. The client learns at once that a URL is
forbidden, unreachable or too large (problem+json `url_forbidden` / `url_fetch_failed` /
`payload_too_large`), media sniffing sees the real bytes, and the worker only ever reads
local files under DATA_DIR. The cost is that the submit request lasts as long as the
download (bounded by `url_fetch_timeout_s`).

Redirects are not followed. A 3xx whose Location is forbidden answers `url_forbidden` (the
target is checked, never contacted); any other 3xx answers `url_fetch_failed`.
"""

from __future__ import annotations

import asyncio

import httpx

from service.errors import PayloadTooLarge, UrlFetchFailed
from service.input_sink import InputSink
from service.urlguard import UrlGuard

CHUNK = 1 << 16


async def fetch_to_sink(
    url: str,
    sink: InputSink,
    guard: UrlGuard,
    connect_timeout_s: float,
    total_timeout_s: float,
) -> None:
    """Stream `url` into `sink` (an entered InputSink). Raises UrlForbidden, UrlFetchFailed,
    PayloadTooLarge."""
    target = await asyncio.to_thread(guard.resolve, url)
    timeout = httpx.Timeout(connect_timeout_s, read=connect_timeout_s * 3)
    try:
        async with (
            asyncio.timeout(total_timeout_s),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "GET",
                target.connect_url,
                headers={"Host": target.host_header, "Accept-Encoding": "identity"},
                extensions={"sni_hostname": target.sni_host},
            ) as resp,
        ):
            if resp.is_redirect:
                location = resp.headers.get("location", "")
                if location:  # joined with the client's URL, not our pinned-IP one
                    await asyncio.to_thread(guard.resolve, str(httpx.URL(url).join(location)))
                raise UrlFetchFailed(
                    f"the URL redirects ({resp.status_code}); redirects are not followed"
                )
            if resp.status_code != 200:
                raise UrlFetchFailed(f"the URL answered HTTP {resp.status_code}")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > sink.max_bytes:
                raise PayloadTooLarge(f"the input is larger than {sink.max_bytes} bytes")
            async for chunk in resp.aiter_raw(CHUNK):
                sink.write(chunk)
    except TimeoutError as exc:
        raise UrlFetchFailed(f"the download did not finish within {total_timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise UrlFetchFailed(f"the URL could not be fetched ({type(exc).__name__})") from exc
