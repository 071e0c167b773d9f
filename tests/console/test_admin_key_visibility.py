"""Businesses and API keys in the console, for staff limited to some businesses."""

from __future__ import annotations

import pytest
from django.urls import reverse

from metrics_app.models import ApiKey, Business

pytestmark = pytest.mark.django_db

KEY_PERMS = ("metrics_app.view_business", "metrics_app.view_apikey", "metrics_app.add_apikey")


@pytest.fixture
def keys(make_key):
    acme = Business.objects.create(id="acme-dental", name="Acme Dental")
    bloom = Business.objects.create(id="bloom-florist", name="Bloom Florist")
    return {
        "acme": make_key(acme, name="acme chat app")[0],
        "bloom": make_key(bloom, name="bloom chat app")[0],
        "agency": make_key(None, name="agency reader", can_ingest=False, can_read=True)[0],
    }


def test_limited_staff_see_only_their_businesses_and_keys(staff_factory, keys, logged_in):
    client = logged_in(staff_factory("acme-only", businesses=["acme-dental"], perms=KEY_PERMS))

    businesses = client.get(reverse("admin:metrics_app_business_changelist")).content.decode()
    assert "Acme Dental" in businesses and "Bloom Florist" not in businesses
    key_list = client.get(reverse("admin:metrics_app_apikey_changelist")).content.decode()
    assert "acme chat app" in key_list
    assert "bloom chat app" not in key_list and "agency reader" not in key_list
    other = client.get(reverse("admin:metrics_app_business_change", args=["bloom-florist"]))
    assert other.status_code == 302


def test_staff_who_see_everything_see_every_key(staff_factory, keys, logged_in):
    client = logged_in(staff_factory("all-seeing", perms=KEY_PERMS))

    key_list = client.get(reverse("admin:metrics_app_apikey_changelist")).content.decode()
    assert all(name in key_list for name in ("acme chat app", "bloom chat app", "agency reader"))


def test_limited_staff_cannot_make_an_agency_key_or_a_key_for_another_business(staff_factory, keys, logged_in):
    client = logged_in(staff_factory("acme-only", businesses=["acme-dental"], perms=KEY_PERMS))
    add = reverse("admin:metrics_app_apikey_add")
    before = ApiKey.objects.count()

    form = client.get(add).content.decode()
    assert 'value="bloom-florist"' not in form
    for business in ("", "bloom-florist"):
        response = client.post(add, {"business": business, "name": "sneaky", "can_read": "on"})
        assert response.status_code == 200  # the form again, with the error
    assert ApiKey.objects.count() == before

    response = client.post(add, {"business": "acme-dental", "name": "rotated", "can_ingest": "on"})
    assert ApiKey.objects.filter(name="rotated", business_id="acme-dental").exists()
    assert response.status_code == 200 and "mlk_" in response.content.decode()
