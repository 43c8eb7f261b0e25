"""training/video/media.py against real local HTTP servers: a Label Studio stand-in that checks
the token, and a plain file host standing in for a bucket.

Both run on loopback, which the media policy refuses by default: Label Studio is trusted as
LABEL_STUDIO_URL's origin, and the bucket is allow-listed (MEDIA_ALLOWED_HOSTS) where a test
fetches from it. The attacks themselves are replayed in test_security_media.py."""

from __future__ import annotations

import base64
import logging
import threading
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR

from training.settings import Settings
from training.video.media import (
    MediaError,
    MediaRefused,
    MediaResolver,
    get_video_url,
    resolve_media,
)

MB = 1024 * 1024
LS_TOKEN = "test-token-8f3a1c77d2"  # what the label_studio fixture accepts (conftest.LS_TOKEN)


def host_port(host) -> str:
    """``127.0.0.1:<port>`` of a stand-in server, as MEDIA_ALLOWED_HOSTS takes it."""
    return host.url.split("://", 1)[1]


def make_resolver(tmp_path: Path, ls=None, bucket=None, **kwargs) -> MediaResolver:
    kwargs.setdefault("max_bytes", 100 * MB)
    if bucket is not None:
        kwargs.setdefault("allowed_hosts", host_port(bucket))
    return MediaResolver(
        tmp_path / "media",
        label_studio_url=ls.url if ls else "",
        api_key=LS_TOKEN if ls else "",
        **kwargs,
    )


def cache_entries(resolver: MediaResolver) -> list[Path]:
    return sorted(p for p in resolver.cache_dir.iterdir() if p.is_dir())


def cache_bytes(resolver: MediaResolver) -> int:
    return sum(f.stat().st_size for f in resolver.cache_dir.rglob("*") if f.is_file())


def test_get_video_url_reads_the_video_value_key():
    data = {"video": " /data/upload/1/a.mp4 ", "other": "x"}
    assert get_video_url(data, "$video") == "/data/upload/1/a.mp4"
    assert get_video_url(data, "video") == "/data/upload/1/a.mp4"
    with pytest.raises(MediaError, match="'clip'"):
        get_video_url(data, "$clip")
    with pytest.raises(MediaError):
        get_video_url({"video": 3}, "$video")


def test_local_paths_and_file_urls_are_refused_by_default(tmp_path):
    resolver = make_resolver(tmp_path)
    clip = DATA_DIR / "b.mp4"
    for url in (str(clip), clip.as_uri(), "b.mp4", "ftp://host/b.mp4"):
        with pytest.raises(MediaRefused, match="local files"):
            resolver.resolve(url)
    assert not resolver.cache_dir.exists()


def test_local_paths_and_file_urls_are_used_in_place_when_allowed(tmp_path):
    resolver = make_resolver(tmp_path, allow_local_files=True)
    clip = DATA_DIR / "b.mp4"
    assert resolver.resolve(str(clip)) == clip
    assert resolver.resolve(clip.as_uri()) == clip
    with pytest.raises(MediaError, match="no such file"):
        resolver.resolve(str(tmp_path / "missing.mp4"))
    assert not resolver.cache_dir.exists()  # nothing was copied


def test_http_url_is_downloaded_once_and_then_served_from_the_cache(tmp_path, bucket):
    resolver = make_resolver(tmp_path, bucket=bucket)
    url = f"{bucket.url}/bikes.mp4"
    first = resolver.resolve(url)
    assert first.read_bytes() == (DATA_DIR / "bikes.mp4").read_bytes()
    assert bucket.paths() == ["/bikes.mp4"]
    assert "Authorization" not in bucket.seen[0].headers  # not Label Studio's host

    second = MediaResolver(resolver.cache_dir, max_bytes=100 * MB).resolve(url)
    assert second == first
    assert bucket.paths() == ["/bikes.mp4"]  # a hit, even from another resolver


def test_upload_url_uses_the_token_and_a_hit_makes_no_request(tmp_path, label_studio):
    resolver = make_resolver(tmp_path, label_studio)
    path = resolver.resolve("/data/upload/7/b.mp4", task_id=3)
    assert path.read_bytes() == (DATA_DIR / "b.mp4").read_bytes()
    # The sdk asks the storage proxy first, then falls back to /data/upload.
    assert label_studio.paths() == [
        "/storage-data/uploaded/?filepath=upload/7/b.mp4",
        "/data/upload/7/b.mp4",
    ]
    assert all(s.headers["Authorization"] == f"Token {LS_TOKEN}" for s in label_studio.seen)

    assert resolver.resolve("/data/upload/7/b.mp4", task_id=3) == path
    assert len(label_studio.seen) == 2


def test_local_files_url_is_fetched_from_label_studio(tmp_path, label_studio):
    resolver = make_resolver(tmp_path, label_studio)
    path = resolver.resolve("/data/local-files/?d=videos/muted_b.mp4")
    assert path.read_bytes() == (DATA_DIR / "muted_b.mp4").read_bytes()
    assert label_studio.paths() == ["/data/local-files/?d=videos/muted_b.mp4"]


def test_cloud_uri_goes_through_presign_and_the_token_stays_with_label_studio(
    tmp_path, label_studio, bucket
):
    resolver = make_resolver(tmp_path, label_studio, bucket)
    uri = "s3://my-bucket/videos/carphone_pristine.mp4"
    path = resolver.resolve(uri, task_id=42)
    assert path.read_bytes() == (DATA_DIR / "carphone_pristine.mp4").read_bytes()

    (presign,) = label_studio.seen
    assert presign.path.startswith("/tasks/42/presign/?fileuri=")
    encoded = presign.path.split("fileuri=", 1)[1]
    assert base64.urlsafe_b64decode(encoded).decode() == uri
    (download,) = bucket.seen
    assert download.path == "/carphone_pristine.mp4?X-Sig=abc"
    assert "Authorization" not in download.headers  # dropped on the cross-host redirect

    # The cache key is the cloud URI, not the task: another task with the same file hits.
    assert resolver.resolve(uri, task_id=43) == path
    assert len(label_studio.seen) == 1


def test_cloud_uri_without_task_id_is_an_error(tmp_path, label_studio):
    with pytest.raises(MediaError, match="task id"):
        make_resolver(tmp_path, label_studio).resolve("gs://b/x.mp4")


def test_relative_url_without_label_studio_url_names_the_setting(tmp_path):
    resolver = MediaResolver(tmp_path / "media", max_bytes=MB, api_key=LS_TOKEN)
    with pytest.raises(MediaError, match="LABEL_STUDIO_URL") as err:
        resolver.resolve("/data/upload/1/b.mp4")
    assert "/data/upload/1/b.mp4" in str(err.value)
    assert LS_TOKEN not in str(err.value)


def test_relative_url_without_api_key_names_the_setting(tmp_path, label_studio):
    resolver = MediaResolver(tmp_path / "media", max_bytes=MB, label_studio_url=label_studio.url)
    with pytest.raises(MediaError, match="LABEL_STUDIO_API_KEY"):
        resolver.resolve("/data/upload/1/b.mp4")
    assert label_studio.seen == []


def test_setup_credentials_are_a_fallback_only(tmp_path, label_studio):
    # A /setup host is not trusted at a loopback address unless allow-listed.
    refused = MediaResolver(tmp_path / "refused", max_bytes=MB)
    refused.set_fallback_credentials(label_studio.url, LS_TOKEN)
    with pytest.raises(MediaRefused, match=r"127\.0\.0\.1, a loopback address"):
        refused.resolve("/data/upload/1/b.mp4")
    assert label_studio.seen == []

    resolver = MediaResolver(
        tmp_path / "media", max_bytes=MB, allowed_hosts=host_port(label_studio)
    )
    resolver.set_fallback_credentials(label_studio.url, LS_TOKEN)
    assert resolver.resolve("/data/upload/1/b.mp4").is_file()

    env_wins = make_resolver(tmp_path / "other", label_studio)
    env_wins.set_fallback_credentials("http://127.0.0.1:1", "wrong-token")
    assert env_wins.resolve("/data/upload/1/bikes.mp4").is_file()


def test_404_is_a_media_error_naming_the_url_but_never_the_key(tmp_path, label_studio, caplog):
    caplog.set_level(logging.DEBUG)
    resolver = make_resolver(tmp_path, label_studio)
    with pytest.raises(MediaError) as err:
        resolver.resolve("/data/upload/1/nope.mp4")
    message = str(err.value)
    assert "/data/upload/1/nope.mp4" in message
    assert "404" in message
    assert LS_TOKEN not in message
    assert all(LS_TOKEN not in r.getMessage() for r in caplog.records)
    # A failed download leaves nothing behind that could pass for a cached file.
    assert list(resolver.cache_dir.iterdir()) == []


def test_wrong_key_is_a_media_error_without_the_key(tmp_path, label_studio):
    resolver = MediaResolver(
        tmp_path / "media", max_bytes=MB, label_studio_url=label_studio.url, api_key="bad-key-123"
    )
    with pytest.raises(MediaError, match="401") as err:
        resolver.resolve("/data/local-files/?d=b.mp4")
    assert "bad-key-123" not in str(err.value)


def test_connection_refused_is_a_media_error(tmp_path, unused_port):
    url = f"http://127.0.0.1:{unused_port}/b.mp4"
    resolver = make_resolver(tmp_path, allowed_hosts=f"127.0.0.1:{unused_port}")
    with pytest.raises(MediaError, match="connection") as err:
        resolver.resolve(url + "?X-Sig=secret")
    assert url in str(err.value)
    assert "secret" not in str(err.value)


def test_lru_eviction_keeps_the_cache_under_its_bound(tmp_path, bucket):
    # 1 MB bound; b 0.26 MB, bikes 0.51 MB, carphone_pristine 0.59 MB.
    settings = Settings(
        cache_dir=tmp_path / "cache", cache_max_mb=1, media_allowed_hosts=host_port(bucket)
    )
    resolver = MediaResolver.from_settings(settings)
    b = resolver.resolve(f"{bucket.url}/b.mp4")
    time.sleep(0.02)
    bikes = resolver.resolve(f"{bucket.url}/bikes.mp4")
    time.sleep(0.02)
    assert resolver.resolve(f"{bucket.url}/b.mp4") == b  # a hit makes b the most recent
    time.sleep(0.02)
    carphone = resolver.resolve(f"{bucket.url}/carphone_pristine.mp4")

    assert b.is_file() and carphone.is_file()
    assert not bikes.exists()  # the least recently used went
    assert cache_bytes(resolver) <= 1 * MB
    assert len(cache_entries(resolver)) == 2

    requests_before = len(bucket.seen)
    assert resolve_media(f"{bucket.url}/bikes.mp4", settings).is_file()
    assert len(bucket.seen) == requests_before + 1  # evicted, so downloaded again


def test_a_file_larger_than_the_bound_is_kept_for_its_caller(tmp_path, bucket):
    resolver = make_resolver(tmp_path, bucket=bucket, max_bytes=100_000)
    path = resolver.resolve(f"{bucket.url}/bigbuckbunny.mp4")
    assert path.is_file()


def test_concurrent_requests_for_one_url_download_it_once(tmp_path, bucket):
    resolver = make_resolver(tmp_path, bucket=bucket)
    url = f"{bucket.url}/bigbuckbunny.mp4"
    results: list[Path] = []
    barrier = threading.Barrier(8)

    def fetch() -> None:
        barrier.wait()
        results.append(resolver.resolve(url))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8
    assert bucket.paths() == ["/bigbuckbunny.mp4"]
