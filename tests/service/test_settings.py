"""Settings validation and API key parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.settings import GatewaySettings, WorkerSettings
from service.auth import LOCAL_OWNER, KeyRing
from service.errors import Unauthorized

GOOD = "a-real-random-key-0123456789"


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\nbeta:{GOOD}-b\n\n")
    monkeypatch.setenv("OMNIBATCH_API_KEYS", f"alpha:{GOOD}-a, gamma:{GOOD}-c")
    monkeypatch.setenv("OMNIBATCH_API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("OMNIBATCH_ALLOW_PRIVATE_URLS", "127.0.0.1/32,::1/128")
    s = GatewaySettings(host="0.0.0.0")
    assert s.key_pairs() == {"alpha": f"{GOOD}-a", "gamma": f"{GOOD}-c", "beta": f"{GOOD}-b"}
    assert s.allow_private_urls == ["127.0.0.1/32", "::1/128"]
    ring = KeyRing(s.key_pairs())
    assert ring.owner(f"Bearer {GOOD}-b") == "beta"
    with pytest.raises(Unauthorized):
        ring.owner(f"Basic {GOOD}-b")


@pytest.mark.parametrize(
    "keys",
    [
        ["alpha:changethis"],
        ["alpha:short"],
        ["no-colon-here-0123456789"],
        [f"a:{GOOD}", f"a:{GOOD}x"],
    ],
)
def test_bad_keys_are_refused(keys):
    with pytest.raises(ValidationError):
        GatewaySettings(api_keys=keys)


def test_placeholder_webhook_secret_is_refused():
    with pytest.raises(ValidationError, match="placeholder"):
        GatewaySettings(webhook_secret="changeme")


def test_open_mode_only_on_loopback():
    assert KeyRing(GatewaySettings(host="127.0.0.1").key_pairs()).owner(None) == LOCAL_OWNER
    GatewaySettings(host="::1")
    with pytest.raises(ValidationError, match="without API keys"):
        GatewaySettings(host="0.0.0.0")
    GatewaySettings(host="0.0.0.0", api_keys=[f"alpha:{GOOD}"])


def test_worker_media_caps_reach_the_media_limits(monkeypatch):
    monkeypatch.setenv("OMNIBATCH_MAX_VIDEO_S", "90")
    monkeypatch.setenv("OMNIBATCH_MAX_PAGES", "3")
    limits = WorkerSettings().media_limits
    assert (limits.max_duration_s, limits.max_pages) == (90.0, 3)
