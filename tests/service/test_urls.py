"""URL ingestion and the SSRF guard: forbidden addresses are refused before any connection."""

from __future__ import annotations

import ipaddress

import pytest

from service.errors import UrlFetchFailed, UrlForbidden
from service.urlguard import UrlGuard, is_public
from tests.service.conftest import png_bytes, serve_app
from tests.service.test_submit import assert_problem

pytestmark = pytest.mark.anyio
LOOPBACK_ALLOWED = ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1",
        "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address):
    assert not is_public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UrlForbidden):
        UrlGuard().resolve(f"http://{host}:8080/x")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_pass_and_are_pinned(address):
    host = f"[{address}]" if ":" in address else address
    target = UrlGuard().resolve(f"https://{host}/a?b=1")
    assert target.connect_url == f"https://{host}/a?b=1" and target.sni_host == address


def test_hostnames_are_judged_by_what_they_resolve_to():
    with pytest.raises(UrlForbidden):
        UrlGuard().resolve("http://localhost:9/")
    target = UrlGuard(["localhost"]).resolve("http://localhost:9/p")
    assert target.host_header == "localhost:9"
    assert ipaddress.ip_address(target.connect_url.split("//")[1].rsplit(":", 1)[0].strip("[]"))
    with pytest.raises(UrlFetchFailed):
        UrlGuard().resolve("http://does-not-exist.invalid/")


def test_allow_list_cidrs_exempt_only_what_they_name():
    guard = UrlGuard(["10.1.0.0/16", "::1/128"])
    guard.resolve("http://10.1.2.3/")
    guard.resolve("http://[::1]/")
    for url in ("http://10.2.0.1/", "http://127.0.0.1/", "ftp://8.8.8.8/"):
        with pytest.raises(UrlForbidden):
            guard.resolve(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.png", "http://10.0.0.1/a.png", "http://169.254.169.254/latest/",
        "http://[::1]:9/a.png", "http://[::ffff:10.0.0.1]/a.png",
    ],
)  # fmt: skip
async def test_submit_with_forbidden_url(api, url):
    resp = await api.post("/v1/jobs", json={"input": {"url": url}})
    assert_problem(resp, 422, "url_forbidden")


async def test_submit_with_forbidden_webhook_url(api, receiver):
    body = {"input": {"url": receiver.url}, "webhook": {"url": "http://169.254.169.254/hook"}}
    assert_problem(await api.post("/v1/jobs", json=body), 422, "url_forbidden")


async def test_url_input_is_downloaded(settings, receiver):
    receiver.replies = [(200, {"Content-Type": "image/png"}, png_bytes())]
    async with serve_app(settings(allow_private_urls=LOOPBACK_ALLOWED)) as api:
        resp = await api.post("/v1/jobs", json={"input": {"url": f"{receiver.url}/img?x=1"}})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert api.app_state.storage.input_path(job_id).read_bytes() == png_bytes()
        assert (await api.get(f"/v1/jobs/{job_id}")).json()["media_type"] == "image"
    assert receiver.requests[0][0] == "/img?x=1"


async def test_redirect_to_metadata_address_is_refused_without_following(settings, receiver):
    receiver.replies = [(302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")]
    async with serve_app(settings(allow_private_urls=LOOPBACK_ALLOWED)) as api:
        resp = await api.post("/v1/jobs", json={"input": {"url": f"{receiver.url}/r"}})
        assert_problem(resp, 422, "url_forbidden")
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        ((302, {"Location": "/elsewhere"}, b""), 422, "url_fetch_failed"),  # allowed, not followed
        ((404, {}, b"nope"), 422, "url_fetch_failed"),
        ((200, {}, b""), 422, "invalid_request"),  # empty
        ((200, {}, b"\x89PNG" + bytes(2 << 20)), 413, "payload_too_large"),
    ],
    ids=["redirect", "404", "empty", "too-large"],
)
async def test_url_fetch_failures(settings, receiver, reply, status, code):
    receiver.replies = [reply]
    async with serve_app(settings(allow_private_urls=LOOPBACK_ALLOWED)) as api:
        resp = await api.post("/v1/jobs", json={"input": {"url": receiver.url}})
        assert_problem(resp, status, code)
        assert not any((api.app_state.storage.root / "inputs").glob("*/*"))
    assert len(receiver.requests) == 1
