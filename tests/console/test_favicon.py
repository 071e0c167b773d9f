"""Browsers ask every page for /favicon.ico: the admin's pages get an icon, not a 404."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client


@pytest.mark.django_db
def test_an_admin_page_and_its_favicon_both_load() -> None:
    staff = Client()
    staff.force_login(User.objects.create_superuser("boss", password="pw-for-tests-only"))
    assert staff.get("/admin/").status_code == 200

    icon = staff.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon["Content-Type"] == "image/x-icon"  # whitenoise's own table, whatever the machine's mime.types says
    assert b"".join(icon.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an ICO file's signature
