"""engine.config: the base URL on its own is the one the full settings give."""

from __future__ import annotations

import pytest

from engine.config import configured_base_url, load_settings


@pytest.mark.parametrize("environ", [
    {},
    {"SHAREDCARE_HTTP_HOST": "0.0.0.0", "SHAREDCARE_HTTP_PORT": "9090"},
    {"SHAREDCARE_BASE_URL": "https://shared-care.leeds.example/fhir/"},
    {"SHAREDCARE_BASE_URL": "", "SHAREDCARE_HTTP_PORT": "8081"},
])
def test_the_base_url_alone_is_the_settings_base_url(environ: dict[str, str]) -> None:
    assert configured_base_url(environ) == load_settings(environ).base_url
    assert not configured_base_url(environ).endswith("/")


def test_the_base_url_defaults_to_the_http_listener() -> None:
    assert configured_base_url({}) == "http://127.0.0.1:8080/fhir"
