"""The media policy against the attacks of the security issue, replayed on loopback.

Each attack has an "attacker": a ScriptedHost (tests/support/fake_label_studio.py) on another
loopback port that records every connection and request it receives. Where the policy must
refuse, the attacker must see nothing at all. "Public" hosts are stood in for by allow-listing
one loopback port (MEDIA_ALLOWED_HOSTS), since a test cannot reach the internet.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import fakeredis
import numpy as np
import pytest
from fake_label_studio import FakeLabelStudio, ScriptedHost

from backend.app import create_app
from training.labelstudio.client import LabelStudioSession
from training.settings import Settings
from training.video import media
from training.video.clip import SamplingConfig
from training.video.media import MediaError, MediaRefused, MediaResolver, redact_url
from training.video.media_policy import task_id_int
from training.warn_once import WarnOnce

MB = 1024 * 1024
LS_TOKEN = "test-token-8f3a1c77d2"  # conftest.LS_TOKEN
ATTACKER_TOKEN = "attacker-token-41b7"
CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="A"/><Choice value="B"/></Choices>
</View>"""


@pytest.fixture
def attacker():
    host = ScriptedHost()
    host.serve("/x.mp4", b"attacker bytes")
    yield host
    host.close()


@pytest.fixture
def relay():
    """A host the operator allow-listed (stands in for a public CDN)."""
    host = ScriptedHost()
    yield host
    host.close()


def resolver_for(tmp_path: Path, ls: FakeLabelStudio | None = None, **kwargs) -> MediaResolver:
    """The resolver serving and workers build: from Settings, so the defaults are checked."""
    settings = Settings(
        cache_dir=tmp_path / "cache",
        label_studio_url=ls.url if ls else "",
        label_studio_api_key=LS_TOKEN if ls else "",
        **kwargs,
    )
    return MediaResolver.from_settings(settings)


def never_reached(host: ScriptedHost) -> None:
    assert host.connections == 0 and host.seen == [], host.seen


def no_secret_in_logs(caplog, *secrets: str) -> None:
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in secrets:
            assert secret not in text, record.getMessage()


# -- SSRF: internal addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "address"),
    [
        ("http://127.0.0.1:{port}/x.mp4", "127.0.0.1, a loopback address"),
        ("http://localhost:{port}/x.mp4", "a loopback address"),
        ("http://2130706433:{port}/x.mp4", "127.0.0.1, a loopback address"),
        ("http://127.1:{port}/x.mp4", "127.0.0.1, a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/x.mp4", "a loopback address"),
        ("http://[::1]:{port}/x.mp4", "::1, a loopback address"),
        ("http://0.0.0.0:{port}/x.mp4", "0.0.0.0, an unspecified address"),
        ("https://127.0.0.1:{port}/x.mp4", "127.0.0.1, a loopback address"),
    ],
)
def test_an_internal_url_is_refused_before_any_connection(
    tmp_path, attacker, template, address, caplog
):
    url = template.format(port=attacker.port)
    with pytest.raises(MediaRefused) as err:
        resolver_for(tmp_path).resolve(url, task_id=1)
    assert address in str(err.value)
    assert "MEDIA_ALLOWED_HOSTS" in str(err.value)
    never_reached(attacker)


def test_private_and_metadata_addresses_are_refused(tmp_path):
    resolver = resolver_for(tmp_path)
    for url, what in [
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://10.0.0.1/x.mp4", "a private address"),
        ("http://[fd00::1]/x.mp4", "a private address"),
    ]:
        with pytest.raises(MediaRefused, match=what):
            resolver.resolve(url)


def test_another_port_of_label_studios_host_is_not_label_studio(tmp_path, label_studio, attacker):
    # Trust goes to LABEL_STUDIO_URL's exact origin, not to every port of its host.
    with pytest.raises(MediaRefused, match="loopback"):
        resolver_for(tmp_path, label_studio).resolve(f"{attacker.url}/x.mp4")
    never_reached(attacker)


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused_at_the_hop(
    tmp_path, relay, attacker
):
    relay.redirect("/v.mp4", f"{attacker.url}/x.mp4?X-Sig=s3cr3t")
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port)
    with pytest.raises(MediaRefused) as err:
        resolver.resolve(f"{relay.url}/v.mp4")
    message = str(err.value)
    assert f"redirected to {attacker.url}/x.mp4?..." in message
    assert "127.0.0.1, a loopback address" in message
    assert "s3cr3t" not in message
    assert [s.path for s in relay.seen] == ["/v.mp4"]
    never_reached(attacker)
    assert not list((tmp_path / "cache" / "media").iterdir())


def test_a_presign_redirect_to_an_internal_host_is_refused(tmp_path, media_root, attacker):
    ls = FakeLabelStudio(media_root, token=LS_TOKEN, presign_to=attacker.url)
    try:
        with pytest.raises(MediaRefused, match=r"redirected to .*loopback"):
            resolver_for(tmp_path, ls).resolve("s3://b/x.mp4", task_id=7)
        assert [s.path.split("?")[0] for s in ls.seen] == ["/tasks/7/presign/"]
        never_reached(attacker)
    finally:
        ls.close()


def test_redirects_are_limited(tmp_path, relay):
    for i in range(5):
        relay.redirect(f"/r{i}", f"/r{i + 1}")
    relay.serve("/r5", b"video")
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port)
    with pytest.raises(MediaError, match=r"more than MEDIA_MAX_REDIRECTS \(3\) redirects"):
        resolver.resolve(f"{relay.url}/r0")
    assert len(relay.seen) == 4  # the first request and three hops
    allowed = resolver_for(
        tmp_path / "more", media_allowed_hosts=relay.host_port, media_max_redirects=5
    )
    assert allowed.resolve(f"{relay.url}/r0").read_bytes() == b"video"


def test_redirects_to_other_schemes_are_refused(tmp_path, relay):
    relay.redirect("/v.mp4", "file:///etc/passwd")
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port)
    with pytest.raises(MediaRefused, match="only http"):
        resolver.resolve(f"{relay.url}/v.mp4")


def test_the_check_applies_to_every_address_a_name_resolves_to(monkeypatch):
    from training.video import media_policy

    def resolve(host, port, **kwargs):
        return [(2, 1, 6, "", ("93.184.215.14", port)), (2, 1, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(media_policy.socket, "getaddrinfo", resolve)
    policy = media_policy.AddressPolicy()
    with pytest.raises(MediaRefused, match=r"10\.0\.0\.7, a private address"):
        policy.checked_addresses("https", "cdn.example.com", 443)


def test_connections_go_to_the_checked_address_not_a_second_lookup(tmp_path, relay, monkeypatch):
    """DNS rebinding: the name is resolved once, by the check, and the socket connects to
    the address that passed; a second lookup would answer differently here."""
    from training.video import download as download_module
    from training.video import media_policy

    relay.serve("/v.mp4", b"checked bytes")
    lookups: list[str] = []
    real = media_policy.socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host != "media.test":  # numeric addresses: no DNS involved
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        # The first answer passes the allow-list check; a later one would be internal.
        answer = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
        return real(answer, port, *args, **kwargs)

    monkeypatch.setattr(media_policy.socket, "getaddrinfo", rebinding)
    connected: list[tuple] = []
    real_connect = download_module.urllib3_connection.create_connection

    def record(address, *args, **kwargs):
        connected.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(download_module.urllib3_connection, "create_connection", record)
    resolver = resolver_for(tmp_path, media_allowed_hosts=f"media.test:{relay.port}")
    path = resolver.resolve(f"http://media.test:{relay.port}/v.mp4")
    assert path.read_bytes() == b"checked bytes"
    assert lookups == ["media.test"]
    assert connected == [("127.0.0.1", relay.port)]
    assert relay.seen[0].headers["Host"] == f"media.test:{relay.port}"


# -- the backend's own disk ------------------------------------------------------------------


def test_file_urls_and_local_paths_are_refused_and_not_read(tmp_path, monkeypatch):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not for tasks")
    resolver = resolver_for(tmp_path)

    def no_disk(*args, **kwargs):
        raise AssertionError("the resolver touched the file system")

    references = [secret.as_uri(), str(secret), "~/secret.mp4", "secret.mp4", "ftp://h/x.mp4"]
    with monkeypatch.context() as patch:
        for name in ("is_file", "stat", "open", "exists", "expanduser"):
            patch.setattr(pathlib.Path, name, no_disk)
        for reference in references:
            with pytest.raises(MediaRefused, match="local files"):
                resolver.resolve(reference, task_id=1)
    assert not resolver.cache_dir.exists()


def test_local_files_come_from_label_studio_over_http_never_from_disk(
    tmp_path, label_studio, monkeypatch
):
    root = tmp_path / "document-root"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "b.mp4").write_bytes(b"the backend's own copy")
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(root))
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(root))
    path = resolver_for(tmp_path, label_studio).resolve("/data/local-files/?d=videos/b.mp4")
    assert path.read_bytes() == (label_studio.root / "b.mp4").read_bytes()
    assert label_studio.paths() == ["/data/local-files/?d=videos/b.mp4"]


# -- where the key goes ------------------------------------------------------------------------


@dataclass
class StubModel:
    """Looks like a LoadedModel to the prediction path; says 50/50 to every clip."""

    version: str = "v-stub"
    labels: list[str] = field(default_factory=lambda: ["A", "B"])
    timeline_labels: list[str] = field(default_factory=list)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(4, 32, 32))
    batch_size: int = 2

    def predict(self, frames: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"classes": np.full((len(frames), 2), 0.5, np.float32)}


class StubServer:
    """A ModelServer that always has the stub model: /predict reaches fetching at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = StubModel()

    def get_model(self, project: str, wait_s: float = 0.0) -> StubModel:
        return self.model

    def get_version(self, project: str) -> str:
        return self.model.version

    def close(self) -> None:
        pass


def setup_then_predict(settings: Settings, hostname: str, video: str) -> dict:
    """POST /setup naming ``hostname`` with the attacker's token, then /predict one task."""
    app = create_app(
        settings,
        server=StubServer(settings),
        # the embedded mode's in-process Redis: /predict claims its tasks there
        training=SimpleNamespace(coordinator=SimpleNamespace(connection=fakeredis.FakeRedis())),
    )
    app.testing = True
    try:
        client = app.test_client()
        setup = {
            "project": "3.1700000000",
            "schema": CONFIG,
            "hostname": hostname,
            "access_token": ATTACKER_TOKEN,
        }
        assert client.post("/setup", json=setup).status_code == 200
        tasks = [{"id": 1, "data": {"video": video}}]
        body = {"project": "3.1700000000", "label_config": CONFIG, "tasks": tasks}
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        return response.get_json()["results"][0]
    finally:
        app.extensions["videoloop"].close()


@pytest.mark.parametrize("allow_attacker", [False, True])
def test_setup_cannot_send_the_env_key_elsewhere_when_only_the_key_is_set(
    tmp_path, attacker, caplog, monkeypatch, allow_attacker
):
    """The issue's case: LABEL_STUDIO_API_KEY set, LABEL_STUDIO_URL not. /setup's host and
    token are used only as a pair and only when neither is set: the key goes nowhere."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(media, "_warn_once", WarnOnce(media.log))  # once per process
    settings = Settings(
        cache_dir=tmp_path / "cache",
        model_dir=tmp_path / "models",
        label_studio_api_key=LS_TOKEN,
        media_allowed_hosts=attacker.host_port if allow_attacker else "",
    )
    result = setup_then_predict(settings, attacker.url, "/data/upload/3/x.mp4")
    assert result == []  # the video failed: no prediction
    assert all(LS_TOKEN not in str(s.headers) for s in attacker.seen)
    never_reached(attacker)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not" in w for w in warnings)
    no_secret_in_logs(caplog, LS_TOKEN, ATTACKER_TOKEN)


def test_setup_is_ignored_when_the_environment_names_label_studio(
    tmp_path, label_studio, attacker, caplog
):
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        cache_dir=tmp_path / "cache",
        model_dir=tmp_path / "models",
        label_studio_url=label_studio.url,
        label_studio_api_key=LS_TOKEN,
        media_allowed_hosts=attacker.host_port,  # even an allow-listed host gets nothing
    )
    result = setup_then_predict(settings, attacker.url, "/data/upload/3/b.mp4")
    assert result["model_version"] == "v-stub" and result["result"]  # fetched and predicted
    never_reached(attacker)
    assert label_studio.paths()[-1] == "/data/upload/3/b.mp4"
    assert all(s.headers["Authorization"] == f"Token {LS_TOKEN}" for s in label_studio.seen)
    no_secret_in_logs(caplog, LS_TOKEN, ATTACKER_TOKEN)


def test_the_key_goes_to_label_studios_exact_origin_only(tmp_path, label_studio, relay):
    """Same host, another scheme or port: no key (an https LABEL_STUDIO_URL never sends it
    over plain http)."""
    relay.serve("/data/upload/1/b.mp4", b"video")
    port = label_studio.url.rsplit(":", 1)[1]
    https_ls = Settings(
        cache_dir=tmp_path / "a",
        label_studio_url=f"https://127.0.0.1:{port}",
        label_studio_api_key=LS_TOKEN,
        media_allowed_hosts=f"127.0.0.1:{port},{relay.host_port}",
    )
    with pytest.raises(MediaError, match="401"):
        MediaResolver.from_settings(https_ls).resolve(f"{label_studio.url}/data/upload/1/b.mp4")
    assert "Authorization" not in label_studio.seen[-1].headers

    plain = resolver_for(tmp_path / "b", label_studio, media_allowed_hosts=relay.host_port)
    assert plain.resolve(f"{relay.url}/data/upload/1/b.mp4").read_bytes() == b"video"
    assert "Authorization" not in relay.seen[-1].headers


def test_the_key_is_not_carried_off_label_studio_by_a_redirect(tmp_path, media_root, relay, caplog):
    caplog.set_level(logging.DEBUG)
    relay.serve("/carphone_pristine.mp4", b"bucket bytes")
    ls = FakeLabelStudio(media_root, token=LS_TOKEN, presign_to=relay.url)
    try:
        resolver = resolver_for(tmp_path, ls, media_allowed_hosts=relay.host_port)
        path = resolver.resolve("gs://bucket/carphone_pristine.mp4", task_id="12")
        assert path.read_bytes() == b"bucket bytes"
        assert ls.seen[0].headers["Authorization"] == f"Token {LS_TOKEN}"
        assert "Authorization" not in relay.seen[0].headers
        assert relay.seen[0].path == "/carphone_pristine.mp4?X-Sig=abc"
        no_secret_in_logs(caplog, LS_TOKEN, "X-Sig=abc")  # presigned signatures stay out too
    finally:
        ls.close()


# -- task ids and Label Studio paths -----------------------------------------------------------


@pytest.mark.parametrize(
    "task_id", ["1/../../api/x", "1?x=1", " 7", "-3", "0", "1.5", True, 2.0, None, "\u0661\u0662"]
)
def test_presign_needs_an_integer_task_id(tmp_path, label_studio, task_id):
    with pytest.raises(MediaError, match="task id") as err:
        resolver_for(tmp_path, label_studio).resolve("s3://b/x.mp4", task_id=task_id)
    assert "not a positive integer" in str(err.value)
    assert label_studio.seen == []


def test_task_ids_are_checked_the_same_way_for_the_api(label_studio):
    assert task_id_int(12) == 12 and task_id_int("12") == 12
    with LabelStudioSession(label_studio.url, LS_TOKEN) as ls:
        with pytest.raises(ValueError, match="not a positive integer"):
            ls.get_prediction_versions("1/../../api/projects")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a positive integer"):
            ls.create_prediction(True, {"result": [], "model_version": "v"})  # type: ignore[arg-type]
    assert label_studio.api_requests() == []


@pytest.mark.parametrize(
    "reference",
    [
        "/data/upload/1/../../api/projects/",
        "/data/upload/%2e%2e/%2e%2e/api/projects/",
        "/data/local-files/../../api/projects/?d=x",
        "/data/other/1",
    ],
)
def test_label_studio_references_stay_on_its_media_routes(tmp_path, label_studio, reference):
    with pytest.raises(MediaRefused):
        resolver_for(tmp_path, label_studio).resolve(reference, task_id=1)
    assert label_studio.seen == []


def test_absolute_urls_on_label_studio_stay_on_its_media_routes(tmp_path, label_studio):
    resolver = resolver_for(tmp_path, label_studio)
    for path in ["/api/projects/", "/data/upload/1/../../../api/projects/", "/tasks/1/x/"]:
        with pytest.raises(MediaRefused, match="Label Studio"):
            resolver.resolve(label_studio.url + path, task_id=1)
    assert label_studio.seen == []
    assert resolver.resolve(f"{label_studio.url}/data/upload/1/b.mp4").is_file()
    assert label_studio.seen[-1].headers["Authorization"] == f"Token {LS_TOKEN}"


# -- size and time ------------------------------------------------------------------------------


def test_a_declared_size_over_the_cap_is_refused_before_reading(tmp_path, relay):
    relay.serve("/big.mp4", b"\0" * (2 * MB))
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port, max_video_mb=1)
    with pytest.raises(MediaError, match=r"larger than MAX_VIDEO_MB \(1 MB\): Content-Length"):
        resolver.resolve(f"{relay.url}/big.mp4")
    assert not list(resolver.cache_dir.iterdir())


@pytest.mark.parametrize("content_length", [None, 1000])
def test_bytes_over_the_cap_abort_the_download(tmp_path, relay, content_length):
    # No Content-Length, or one that lies: the bytes read are counted.
    relay.serve("/big.mp4", b"\0" * (3 * MB), content_length=content_length)
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port, max_video_mb=1)
    if content_length is None:
        with pytest.raises(MediaError, match=r"MAX_VIDEO_MB \(1 MB\): more than"):
            resolver.resolve(f"{relay.url}/big.mp4")
    else:  # urllib3 reads no more than announced: the file is the 1000 bytes announced
        assert resolver.resolve(f"{relay.url}/big.mp4").stat().st_size == 1000


@pytest.mark.parametrize(
    "behaviour",
    ["body", "headers", "silent"],
)
def test_a_slow_server_fails_within_the_deadline(tmp_path, relay, behaviour):
    if behaviour == "silent":
        relay.trickle("/slow.mp4", total_bytes=1, interval_s=10.0, in_headers=True)
    else:
        relay.trickle(
            "/slow.mp4", total_bytes=200, interval_s=0.1, in_headers=behaviour == "headers"
        )
    resolver = resolver_for(tmp_path, media_allowed_hosts=relay.host_port, download_deadline_s=2.0)
    started = time.monotonic()
    with pytest.raises(MediaError, match=r"DOWNLOAD_DEADLINE_S \(2 s\)|timed out"):
        resolver.resolve(f"{relay.url}/slow.mp4")
    elapsed_s = time.monotonic() - started
    assert 1.5 < elapsed_s < 20
    assert not list(resolver.cache_dir.iterdir())


# -- nothing secret in messages and logs ------------------------------------------------------


def test_errors_and_logs_never_carry_the_key_or_query_strings(
    tmp_path, label_studio, relay, attacker, caplog
):
    caplog.set_level(logging.DEBUG)
    relay.redirect("/hop.mp4", f"{attacker.url}/x.mp4?token={LS_TOKEN}")
    resolver = resolver_for(tmp_path, label_studio, media_allowed_hosts=relay.host_port)
    messages = []
    for reference, task_id in [
        ("/data/upload/1/nope.mp4", 1),
        (f"{relay.url}/hop.mp4?sig={LS_TOKEN}", 1),
        (f"{label_studio.url}/data/upload/1/missing.mp4?X-Sig=zzz", 1),
        ("s3://b/x.mp4", "1/../x"),
        (f"http://user:{LS_TOKEN}@127.0.0.1:9/x.mp4", 1),
    ]:
        with pytest.raises(MediaError) as err:
            resolver.resolve(reference, task_id=task_id)
        messages.append(str(err.value))
    for message in messages:
        assert LS_TOKEN not in message and "zzz" not in message, message
    no_secret_in_logs(caplog, LS_TOKEN, "zzz")
    never_reached(attacker)


def test_redact_url_strips_queries_fragments_and_user_info():
    assert redact_url("https://u:p@b.s3.amazonaws.com/k.mp4?X-Amz-Signature=abc#t") == (
        "https://b.s3.amazonaws.com/k.mp4?..."
    )
    assert redact_url("/data/local-files/?d=videos/a.mp4") == "/data/local-files/?..."
    assert redact_url("s3://bucket/key.mp4") == "s3://bucket/key.mp4"


def test_settings_refuse_a_malformed_allow_list_and_disabled_limits():
    with pytest.raises(ValueError, match="MEDIA_ALLOWED_HOSTS"):
        Settings(media_allowed_hosts="http://cdn.example.com/")
    with pytest.raises(ValueError, match="MAX_VIDEO_MB"):
        Settings(max_video_mb=0)
    with pytest.raises(ValueError, match="DOWNLOAD_DEADLINE_S"):
        Settings(download_deadline_s=0)
    allowed = Settings(media_allowed_hosts=" cdn.example.com, 10.0.0.5:8080 ,[fd00::1]:9000")
    resolver = MediaResolver.from_settings(allowed)
    assert resolver.allow_local_files is False
    policy = resolver._policy
    assert policy.trusts("https", "CDN.example.com", 443)
    assert policy.trusts("http", "10.0.0.5", 8080) and not policy.trusts("http", "10.0.0.5", 80)
    assert policy.trusts("http", "fd00::1", 9000)


def test_presign_urls_carry_the_cloud_uri_base64_encoded(tmp_path, label_studio, bucket):
    resolver = resolver_for(tmp_path, label_studio, media_allowed_hosts=bucket.url[7:])
    resolver.resolve("azure-blob://container/clips/b.mp4", task_id=5)
    (presign,) = label_studio.seen
    encoded = presign.path.split("fileuri=", 1)[1]
    assert base64.urlsafe_b64decode(encoded).decode() == "azure-blob://container/clips/b.mp4"
