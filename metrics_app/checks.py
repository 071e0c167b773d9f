"""System checks on stored data (run by `manage.py check --database default` and by `migrate`)."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError, connection

from metrics_app.models import Business
from metrics_app.rules import BUSINESS_ID_CHARACTERS, business_id_problem

MAX_IDS_LISTED = 20


@checks.register(checks.Tags.database)
def check_stored_business_ids(app_configs: Any, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Business ids stored before the one rule existed: still readable, but no new event or document may use them."""
    if not databases:
        return []
    try:
        # `migrate` runs this check before it creates the tables, so look for the table first.
        if Business._meta.db_table not in connection.introspection.table_names():
            return []
        ids = list(Business.objects.order_by("id").values_list("id", flat=True))
    except DatabaseError:  # a database that cannot answer is reported by /health, not here
        return []
    broken = [business_id for business_id in ids if business_id_problem(business_id) is not None]
    if not broken:
        return []
    listed = ", ".join(repr(business_id) for business_id in broken[:MAX_IDS_LISTED])
    more = f" and {len(broken) - MAX_IDS_LISTED} more" if len(broken) > MAX_IDS_LISTED else ""
    return [
        checks.Warning(
            f"{len(broken)} stored business id(s) break the business-id rule: {listed}{more}.",
            hint=(
                f"A business id holds only {BUSINESS_ID_CHARACTERS}. Their analytics stay readable, but events, "
                "keys and documents for them are refused; send new events under a valid id."
            ),
            obj="metrics_app.Business",
            id="metrics_app.W010",
        )
    ]
