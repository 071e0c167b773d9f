"""Staff access becomes explicit: a staff user sees only what their grants name.

Before, a staff user with no access rows saw every business, so removing a
user's last row (or deleting the business it named) widened their view to
everything. Staff who see every business today are given an explicit
all-businesses grant (a row with no business), so nobody loses access.
"""

import django.db.models.deletion
import metrics_app.rules
from django.conf import settings
from django.db import migrations, models


def grant_every_business_to_unrestricted_staff(apps, schema_editor):
    # Frozen: only the historical models of this migration's state.
    StaffBusinessAccess = apps.get_model("metrics_app", "StaffBusinessAccess")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    limited = StaffBusinessAccess.objects.values("user_id")
    unrestricted = User.objects.filter(is_staff=True, is_superuser=False).exclude(pk__in=limited)
    StaffBusinessAccess.objects.bulk_create(
        [StaffBusinessAccess(user_id=pk, business=None) for pk in unrestricted.values_list("pk", flat=True)]
    )


def drop_every_business_grants(apps, schema_editor):
    # Going back, no rows meant every business again; a user who also had specific rows keeps only those.
    apps.get_model("metrics_app", "StaffBusinessAccess").objects.filter(business__isnull=True).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('metrics_app', '0006_analytics_rollups'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='business',
            name='id',
            field=models.CharField(help_text="The chat app's business_id: letters, digits and . _ : @ -.", max_length=255, primary_key=True, serialize=False, validators=[metrics_app.rules.validate_business_id], verbose_name='business id'),
        ),
        migrations.AlterField(
            model_name='staffbusinessaccess',
            name='business',
            field=models.ForeignKey(blank=True, help_text='Leave empty to grant every business.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='metrics_app.business'),
        ),
        migrations.AddConstraint(
            model_name='staffbusinessaccess',
            constraint=models.UniqueConstraint(condition=models.Q(('business__isnull', True)), fields=('user',), name='staff_access_one_all_grant'),
        ),
        migrations.RunPython(grant_every_business_to_unrestricted_staff, drop_every_business_grants),
    ]
