"""Opening hours and exceptions, edited inline on a business's admin page."""

from __future__ import annotations

from datetime import date, time
from typing import Any

import pytest
from django.urls import reverse

from metrics_app.models import Business, OpeningException, OpeningHours

pytestmark = pytest.mark.django_db

HOURS_PERMS = (
    "metrics_app.view_business", "metrics_app.change_business",
    "metrics_app.view_openinghours", "metrics_app.add_openinghours", "metrics_app.change_openinghours",
    "metrics_app.view_openingexception", "metrics_app.add_openingexception",
)


@pytest.fixture
def businesses() -> dict[str, Business]:
    return {
        "acme": Business.objects.create(id="acme-dental", name="Acme Dental", time_zone="Europe/London"),
        "bloom": Business.objects.create(id="bloom-florist", name="Bloom Florist", time_zone="Asia/Kathmandu"),
    }


def _form(business: Business, hours: list[dict[str, str]], exceptions: list[dict[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {"name": business.name, "time_zone": business.time_zone,
                            "conversation_idle_minutes": business.conversation_idle_minutes}
    for prefix, rows in (("opening_hours", hours), ("opening_exceptions", exceptions), ("api_keys", [])):
        data.update({f"{prefix}-TOTAL_FORMS": str(len(rows)), f"{prefix}-INITIAL_FORMS": "0",
                     f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
        for n, row in enumerate(rows):
            data.update({f"{prefix}-{n}-{name}": value for name, value in row.items()})
    return data


def _change(business: Business) -> str:
    return reverse("admin:metrics_app_business_change", args=[business.pk])


def test_staff_of_the_business_set_a_lunch_break_and_a_holiday(staff_factory, businesses, logged_in):
    client = logged_in(staff_factory("acme-only", businesses=["acme-dental"], perms=HOURS_PERMS))
    hours = [{"weekday": "1", "opens": "09:00", "closes": "12:30"},
             {"weekday": "1", "opens": "13:15", "closes": "17:45"}]
    exceptions = [{"date": "2026-12-25", "opens": "", "closes": "", "note": "Christmas"}]

    response = client.post(_change(businesses["acme"]), _form(businesses["acme"], hours, exceptions))

    assert response.status_code == 302, response.content.decode()[:2000]
    assert sorted(OpeningHours.objects.filter(business_id="acme-dental").values_list("opens", "closes")) == [
        (time(9, 0), time(12, 30)), (time(13, 15), time(17, 45))]
    holiday = OpeningException.objects.get(business_id="acme-dental")
    assert holiday.date == date(2026, 12, 25) and holiday.closed_all_day and holiday.note == "Christmas"


@pytest.mark.parametrize(("hours", "message"), [
    ([{"weekday": "2", "opens": "17:00", "closes": "09:00"}], "Closes must be after opens"),
    ([{"weekday": "2", "opens": "09:10", "closes": "17:00"}], "is not on a quarter hour"),
    ([{"weekday": "3", "opens": "09:00", "closes": "13:00"}, {"weekday": "3", "opens": "12:00", "closes": "17:00"}],
     "Intervals of Wednesday overlap"),
])
def test_bad_hours_are_refused_with_a_clear_error(superuser, businesses, logged_in, hours, message):
    client = logged_in(superuser)

    response = client.post(_change(businesses["acme"]), _form(businesses["acme"], hours, []))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not OpeningHours.objects.exists()


def test_an_exception_needs_both_times_or_neither(superuser, businesses, logged_in):
    client = logged_in(superuser)
    exceptions = [{"date": "2026-12-24", "opens": "09:00", "closes": "", "note": "Christmas Eve"}]

    response = client.post(_change(businesses["acme"]), _form(businesses["acme"], [], exceptions))

    assert response.status_code == 200
    assert "Give both opens and closes, or neither" in response.content.decode()
    assert not OpeningException.objects.exists()


def test_staff_limited_to_another_business_cannot_reach_its_hours(staff_factory, businesses, logged_in):
    OpeningHours.objects.create(business=businesses["bloom"], weekday=1, opens=time(9), closes=time(17))
    client = logged_in(staff_factory("acme-only", businesses=["acme-dental"], perms=HOURS_PERMS))
    hours = [{"weekday": "2", "opens": "00:00", "closes": "00:00"}]

    assert client.get(_change(businesses["bloom"])).status_code == 302
    client.post(_change(businesses["bloom"]), _form(businesses["bloom"], hours, []))

    assert list(OpeningHours.objects.filter(business_id="bloom-florist").values_list("weekday", flat=True)) == [1]


def test_the_database_refuses_hours_off_the_quarter_hours(businesses):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        OpeningHours.objects.create(business=businesses["acme"], weekday=1, opens=time(9, 5), closes=time(17))
    with pytest.raises(IntegrityError), transaction.atomic():
        OpeningHours.objects.create(business=businesses["acme"], weekday=8, opens=time(9), closes=time(17))
    with pytest.raises(IntegrityError), transaction.atomic():
        OpeningException.objects.create(business=businesses["acme"], date=date(2026, 1, 1), opens=time(9))
    OpeningHours.objects.create(business=businesses["acme"], weekday=7, opens=time(23), closes=time(0))  # to midnight
