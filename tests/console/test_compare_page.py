"""The compare page and the experiment admin: who may open and use them, what the page asks the API, and
experiments made, reworded and stopped only through the experiments service."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.urls import reverse

from metrics_app.experiments import services
from metrics_app.models import Business, Experiment

pytestmark = pytest.mark.django_db
COMPARE = reverse("admin:metrics_app_experiment_compare")
ADD = reverse("admin:metrics_app_experiment_add")
CHANGELIST = reverse("admin:metrics_app_experiment_changelist")
NOW = datetime(2026, 3, 18, 10, 20, tzinfo=UTC)
EXPERIMENT_PERMS = ("metrics_app.view_experiment", "metrics_app.add_experiment", "metrics_app.change_experiment",
                    "metrics_app.view_aimetric")


def page_config(response) -> dict[str, Any]:
    match = re.search(r'<script id="compare-config" type="application/json">(.*?)</script>', response.content.decode())
    assert match, "the page must carry its configuration for the script"
    return json.loads(match.group(1))


def options(html: str, name: str) -> list[str]:
    select = html.split(f'name="{name}"')[1].split("</select>")[0]
    return re.findall(r'<option value="([^"]*)"', select)


@pytest.fixture
def businesses(db) -> list[Business]:
    return [Business.objects.create(id="acme-dental", name="Acme Dental", time_zone="Europe/London"),
            Business.objects.create(id="kathmandu-physio", name="Kathmandu Physio", time_zone="Asia/Kathmandu")]


def experiment_of(business_id: str, name: str = "booking-prompt", **fields: Any) -> Experiment:
    return services.create_experiment(Business.objects.get(pk=business_id), name=name, variant_a="v6",
                                      variant_b="v7", **fields)


@pytest.fixture
def acme_only(staff_factory, businesses):
    return staff_factory("acme-only", businesses=["acme-dental"], perms=EXPERIMENT_PERMS)


# --- The compare page.


def test_the_compare_page_needs_a_staff_login(api):
    response = api.get(COMPARE)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_the_experiment_permission_may_not_open_it(staff_factory, businesses, logged_in):
    assert logged_in(staff_factory("nobody", perms=("metrics_app.view_aimetric",))).get(COMPARE).status_code == 403


def test_the_page_loads_its_scripts_and_styles_from_the_service_itself(superuser, businesses, logged_in):
    html = logged_in(superuser).get(COMPARE).content.decode()

    sources = [s for s in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html) if s.endswith((".js", ".css"))]
    assert any(s.endswith("metrics_app/dashboard/charts.js") for s in sources)
    assert any(s.endswith("metrics_app/compare/compare.js") for s in sources)
    assert all(s.startswith("/") and not s.startswith("//") for s in sources), sources


def test_the_page_asks_the_compare_api_for_the_chosen_question(superuser, businesses, logged_in):
    with time_machine.travel(NOW, tick=False):
        response = logged_in(superuser).get(COMPARE, {
            "business": "kathmandu-physio", "dimension": "kb_version", "a": " kb-3 ", "b": "kb-4", "period": "30d",
            "primary_metric": "handoff_rate"})

    config = page_config(response)
    assert config["mode"] == "compare" and config["api"]["answer"] == "/api/analytics/compare"
    params = config["params"]
    assert {k: params[k] for k in ("business_id", "dimension", "a", "b", "primary_metric", "tz")} == {
        "business_id": "kathmandu-physio", "dimension": "kb_version", "a": "kb-3", "b": "kb-4",
        "primary_metric": "handoff_rate", "tz": "Asia/Kathmandu"}
    start, end = datetime.fromisoformat(params["start"]), datetime.fromisoformat(params["end"])
    assert end - start == timedelta(days=30)
    assert (start.hour, start.minute, start.utcoffset()) == (0, 0, timedelta(hours=5, minutes=45))
    # The variants offered come from the breakdown of the same business and period.
    assert config["api"]["values"]["kb_version"] == "/api/analytics/breakdown/kb_version"
    assert config["values_params"]["start"] == params["start"] and config["values_params"]["end"] == params["end"]


def test_without_two_different_variants_the_page_asks_for_nothing_yet(superuser, businesses, logged_in):
    client = logged_in(superuser)

    assert page_config(client.get(COMPARE, {"a": "v6"}))["mode"] == "choose"
    response = client.get(COMPARE, {"a": "v6", "b": "v6"})
    assert page_config(response)["mode"] == "choose"
    assert "Pick two different variants." in response.content.decode()


def test_an_unknown_dimension_is_named_and_prompt_versions_are_compared(superuser, businesses, logged_in):
    response = logged_in(superuser).get(COMPARE, {"dimension": "colour", "a": "v6", "b": "v7"})

    assert "Unknown dimension" in response.content.decode()
    assert page_config(response)["params"]["dimension"] == "prompt_version"


def test_a_saved_experiment_is_shown_from_its_results(superuser, businesses, logged_in):
    experiment = experiment_of("acme-dental")

    response = logged_in(superuser).get(COMPARE, {"experiment": str(experiment.pk)})

    config = page_config(response)
    assert config["mode"] == "experiment"
    assert config["api"]["answer"] == f"/api/experiments/{experiment.pk}/results"
    assert options(response.content.decode(), "experiment") == ["", str(experiment.pk)]


def test_a_limited_staff_member_is_offered_only_their_businesses_and_experiments(acme_only, logged_in):
    ours = experiment_of("acme-dental", name="ours")
    experiment_of("kathmandu-physio", name="theirs-secret")
    client = logged_in(acme_only)

    html = client.get(COMPARE).content.decode()
    assert options(html, "business") == ["acme-dental"]
    assert options(html, "experiment") == ["", str(ours.pk)]
    assert "theirs-secret" not in html and "kathmandu" not in html.lower()


def test_a_limited_staff_member_cannot_compare_another_business(acme_only, logged_in):
    response = logged_in(acme_only).get(COMPARE, {"business": "kathmandu-physio", "a": "v6", "b": "v7"})

    assert "not yours to see" in response.content.decode()
    assert page_config(response)["params"]["business_id"] == "acme-dental"


def test_a_limited_staff_member_cannot_open_another_businesses_experiment(acme_only, logged_in):
    theirs = experiment_of("kathmandu-physio", name="theirs-secret")

    for asked in (str(theirs.pk), "abc", "9" * 30, "²"):
        response = logged_in(acme_only).get(COMPARE, {"experiment": asked})
        html = response.content.decode()
        assert response.status_code == 200
        assert "That experiment does not exist or is not yours to see." in html
        assert page_config(response)["mode"] == "choose" and "theirs-secret" not in html


def test_the_page_is_linked_beside_the_dashboard(superuser, businesses, logged_in):
    client = logged_in(superuser)

    dashboard = client.get(reverse("admin:metrics_app_aimetric_dashboard"), {"business": "acme-dental"})
    assert f'href="{COMPARE}?business=acme-dental"' in dashboard.content.decode()
    assert f'href="{COMPARE}"' in client.get(reverse("admin:metrics_app_aimetric_changelist")).content.decode()
    assert f'href="{COMPARE}"' in client.get(CHANGELIST).content.decode()
    assert reverse("admin:metrics_app_aimetric_dashboard") in client.get(COMPARE).content.decode()


# --- The experiment admin.


def add_form(**fields: Any) -> dict[str, str]:
    return {"business": "acme-dental", "name": "booking-prompt", "description": "v7 asks for the day first",
            "dimension": "prompt_version", "variant_a": "v6", "variant_b": "v7", "split_a": "0.5",
            "primary_metric": "booking_rate", "minimum_lift": "0.05", "started_at_0": "", "started_at_1": "",
            **fields}


def test_staff_make_an_experiment_in_the_admin_starting_now(acme_only, logged_in):
    with time_machine.travel(NOW, tick=False):
        response = logged_in(acme_only).post(ADD, add_form())

    assert response.status_code == 302, response.context["adminform"].form.errors
    made = Experiment.objects.get()
    assert (made.business_id, made.name, made.variant_a, made.variant_b) == ("acme-dental", "booking-prompt", "v6", "v7")
    assert made.started_at == NOW and made.created_at == NOW and made.created_by == acme_only
    assert made.is_running


def test_a_start_in_the_past_is_refused_with_a_form_error(acme_only, logged_in):
    with time_machine.travel(NOW, tick=False):
        response = logged_in(acme_only).post(ADD, add_form(started_at_0="2026-03-01", started_at_1="09:00:00"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "may not be in the past" in " ".join(errors["started_at"])
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"variant_b": "v6"}, "variant_b", "must differ"),
    ({"split_a": "1"}, "split_a", "strictly between 0 and 1"),
    ({"minimum_lift": "0"}, "minimum_lift", "strictly between 0 and 1"),
    ({"name": "not a slug!"}, "name", "slug"),
])
def test_the_services_refusals_land_on_their_fields(acme_only, logged_in, fields, field, reason):
    response = logged_in(acme_only).post(ADD, add_form(**fields))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert reason in " ".join(errors[field]), errors
    assert "__all__" not in errors  # each reason once, on its field
    assert not Experiment.objects.exists()


def test_a_name_already_taken_in_the_business_is_refused(acme_only, logged_in):
    experiment_of("acme-dental")

    response = logged_in(acme_only).post(ADD, add_form())

    assert response.status_code == 200
    assert "already has an experiment of that name" in " ".join(response.context["adminform"].form.errors["name"])
    assert Experiment.objects.count() == 1


def test_a_limited_staff_member_may_only_pick_a_business_of_theirs(acme_only, logged_in):
    client = logged_in(acme_only)

    assert options(client.get(ADD).content.decode(), "business") == ["", "acme-dental"]
    response = client.post(ADD, add_form(business="kathmandu-physio"))
    assert response.status_code == 200 and "business" in response.context["adminform"].form.errors
    assert not Experiment.objects.exists()


def test_the_list_shows_only_the_visible_experiments_with_a_link_to_their_results(acme_only, logged_in):
    ours = experiment_of("acme-dental", name="ours")
    experiment_of("kathmandu-physio", name="theirs-secret")

    html = logged_in(acme_only).get(CHANGELIST).content.decode()

    assert "ours" in html and "theirs-secret" not in html
    assert f'href="{COMPARE}?experiment={ours.pk}"' in html
    assert "v6 vs v7" in html


def test_after_creation_only_the_description_can_change(acme_only, logged_in):
    experiment = experiment_of("acme-dental", description="first try")
    change = reverse("admin:metrics_app_experiment_change", args=[experiment.pk])
    client = logged_in(acme_only)

    form = client.get(change).context["adminform"].form
    assert list(form.fields) == ["description"]
    response = client.post(change, add_form(description="v7 asks for the day first", variant_b="v8", split_a="0.9",
                                            started_at_0="2030-01-01", started_at_1="00:00:00", name="renamed"))

    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.description == "v7 asks for the day first"
    assert (experiment.name, experiment.variant_b, experiment.split_a) == ("booking-prompt", "v7", 0.5)
    assert experiment.started_at < datetime(2030, 1, 1, tzinfo=UTC)


def test_the_stop_action_stops_the_selected_experiments_of_the_users_businesses(acme_only, logged_in):
    ours = experiment_of("acme-dental", name="ours")
    theirs = experiment_of("kathmandu-physio", name="theirs")

    response = logged_in(acme_only).post(CHANGELIST, {"action": "stop_selected",
                                                      "_selected_action": [ours.pk, theirs.pk]})

    assert response.status_code == 302
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert not ours.is_running and ours.ended_at > ours.started_at
    assert theirs.is_running  # not theirs to stop: outside their list, so never selected


def test_experiments_are_not_deleted_even_by_a_superuser(superuser, businesses, logged_in):
    experiment = experiment_of("acme-dental")
    client = logged_in(superuser)

    assert client.get(reverse("admin:metrics_app_experiment_delete", args=[experiment.pk])).status_code == 403
    response = client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [experiment.pk]})
    assert response.status_code in (200, 302)
    assert Experiment.objects.filter(pk=experiment.pk).exists()
