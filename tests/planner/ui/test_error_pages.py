"""403, 404 and 500 are pages of the site, in its layout; an ordinary 403 logs no traceback."""

from __future__ import annotations

import logging

import pytest
from django.template.loader import render_to_string
from django.test import Client

from tests.planner.ui.fixtures import UiSite
from tests.planner.ui.test_pages import _text


def test_a_viewer_on_an_edit_page_gets_the_styled_403_and_no_traceback(
    clients: dict[str, Client], ui_site: UiSite, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = clients["vera"].get("/inventory/new/machine/")
    assert response.status_code == 403
    text = _text(response)
    assert "Not allowed" in text and "This needs the operator role." in text
    assert "Overview" in text and "Log out" in text  # the site's layout, signed in
    assert not [r for r in caplog.records if r.exc_info], "an ordinary 403 logs no traceback"


def test_a_missing_page_is_the_styled_404(clients: dict[str, Client], ui_site: UiSite) -> None:
    response = clients["vera"].get("/machines/gone.example.net/")
    assert response.status_code == 404
    text = _text(response)
    assert "Not found" in text and "search box" in text and "Overview" in text
    assert clients["vera"].get("/api/v1/nothing-here").json()["detail"].startswith("No such")


def test_the_500_page_renders_without_a_request() -> None:
    html = render_to_string("500.html")
    assert "Something went wrong on the server" in html and "ui.css" in html
