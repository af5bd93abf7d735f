"""Every setting a number holds is one the service can use: no infinite or NaN duration (LEASE_S=inf
made every claim fail on PostgreSQL's interval), none past MAX_SECONDS, and KLEIN_PORT a port
(99999 was taken modulo 65536 and served on 34463)."""

import pytest
from pydantic import ValidationError

from orchestrator.settings import MAX_SECONDS, Settings

DURATIONS = sorted(name for name in Settings.model_fields if name.endswith("_s"))


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as refused:
        Settings(database_url="unused", **values)
    error = refused.value.errors()[0]  # the one klein prints (later ones follow from it)
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def test_there_are_durations_to_check():
    assert {"lease_s", "job_timeout_s", "sweep_interval_s", "http_keep_alive_s"} <= set(DURATIONS)


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_duration_is_infinite_or_nan(name, value):
    assert refusal(**{name: value}).startswith(f"{name}: ")


@pytest.mark.parametrize("name", DURATIONS)
def test_no_duration_is_past_max_seconds(name):
    assert refusal(**{name: MAX_SECONDS + 1}) == (
        f"{name}: Value error, must be at most 1,000,000,000 seconds"
    )
    assert getattr(Settings(database_url="unused", **{name: MAX_SECONDS}), name) == MAX_SECONDS


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_klein_port_is_a_port(port):
    assert refusal(klein_port=port).startswith("klein_port: Input should be")


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_every_port_is_taken(port):
    assert Settings(database_url="unused", klein_port=port).klein_port == port


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://x",
        " ",
        " https://klein.example",
        "https://",
        "https://user:pw@klein.example",
        "https://klein.example/?a=1",
        "https://klein.example/#top",
        "https://klein.example:99999",
        "https://[::1",
    ],
)
def test_a_public_url_runpod_could_not_call_back_is_refused(url):
    """PUBLIC_BASE_URL builds RunPod's webhook URL and stored images' URLs: one nobody could use
    stops klein at start, naming it, where every job failed with 'RunPod refused the request'."""
    assert refusal(public_base_url=url).startswith("public_base_url: ")


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://klein.example", "https://klein.example"),
        ("http://127.0.0.1:8080/base/", "http://127.0.0.1:8080/base/"),
        ("", None),
    ],
)
def test_a_usable_public_url_is_kept_and_an_empty_one_is_unset(url, kept):
    assert Settings(database_url="unused", public_base_url=url).public_base_url == kept
