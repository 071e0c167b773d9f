"""The weekly digest's mail settings, checked at start-up: a digest switched on with nowhere to send is said."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@checks.register()
def check_digest_mail(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """MLOPS_WEEKLY_DIGEST on, through SMTP, with the SMTP server or the sender left at their defaults."""
    if not settings.MLOPS_WEEKLY_DIGEST or settings.EMAIL_BACKEND != SMTP_BACKEND:
        return []
    unset = [name for name, default in (("EMAIL_HOST", "localhost"), ("DEFAULT_FROM_EMAIL", "mlops@localhost"))
             if getattr(settings, name) == default]
    if not unset:
        return []
    return [
        checks.Warning(
            f"MLOPS_WEEKLY_DIGEST is on and mail goes through SMTP, but {' and '.join(unset)} "
            f"{'is' if len(unset) == 1 else 'are'} left at the default: the digests may not reach anyone",
            hint="Set EMAIL_HOST (with EMAIL_HOST_USER and EMAIL_HOST_PASSWORD) and DEFAULT_FROM_EMAIL; "
                 "see docs/digest.md.",
            id="metrics_app.W030",
        )
    ]
