"""Dedupe keys of their own, /metrics totals of pruned events, the retention state; events partitioned on PostgreSQL.

On PostgreSQL, ai_metrics becomes a table partitioned by range of
"timestamp": one partition per UTC month that holds events, and a default
partition for the rest (the service makes the partitions ahead of time). A
unique index on a partitioned table must hold the partition key, so the
(business_id, event_id) dedupe moves to mlops_event_key, filled here from the
stored events. The primary key becomes (id, "timestamp"); ids still come
from one sequence. On SQLite the table stays as it is, without its unique
constraint.
"""

from datetime import UTC, datetime

import django.db.models.deletion
from django.db import migrations, models


def _month_starts(first, last):
    month = datetime(first.year, first.month, 1, tzinfo=UTC)
    while month <= last:
        yield month
        month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def _next_month(month):
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def _table_indexes(cursor, table):
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
        [table],
    )
    return cursor.fetchall()


def _copy_into(cursor, source, target):
    cursor.execute(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [target],
    )
    columns = cursor.fetchone()[0]
    cursor.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {source}")


def _primary_key(cursor, table):
    """The name of the table's primary-key constraint (a table adopted from the seed's has its own name)."""
    cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", [table])
    row = cursor.fetchone()
    return row[0] if row else None


def fill_event_keys(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("INSERT INTO mlops_event_key (business_id, event_id) SELECT business_id, event_id FROM ai_metrics")


def partition_events(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE ai_metrics IN ACCESS EXCLUSIVE MODE")
        pkey = _primary_key(cursor, "ai_metrics")
        indexes = [(name, sql) for name, sql in _table_indexes(cursor, "ai_metrics") if name != pkey]
        cursor.execute("ALTER TABLE ai_metrics RENAME TO ai_metrics_unpartitioned")
        if pkey is not None:
            cursor.execute(f'ALTER TABLE ai_metrics_unpartitioned RENAME CONSTRAINT "{pkey}" TO ai_metrics_unpartitioned_pkey')
        cursor.execute(
            "CREATE TABLE ai_metrics (LIKE ai_metrics_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            'PARTITION BY RANGE ("timestamp")'
        )
        cursor.execute("CREATE SEQUENCE ai_metrics_id_partitioned_seq OWNED BY ai_metrics.id")
        cursor.execute("SELECT MAX(id), MIN(\"timestamp\"), MAX(\"timestamp\") FROM ai_metrics_unpartitioned")
        top, first, last = cursor.fetchone()
        if top is not None:
            cursor.execute("SELECT setval('ai_metrics_id_partitioned_seq', %s)", [top])
        cursor.execute("ALTER TABLE ai_metrics ALTER COLUMN id SET DEFAULT nextval('ai_metrics_id_partitioned_seq')")
        cursor.execute('ALTER TABLE ai_metrics ADD CONSTRAINT ai_metrics_pkey PRIMARY KEY (id, "timestamp")')
        if first is not None:
            for month in _month_starts(first, last):
                cursor.execute(
                    f"CREATE TABLE ai_metrics_p{month:%Y_%m} PARTITION OF ai_metrics "
                    "FOR VALUES FROM (%s) TO (%s)",
                    [month, _next_month(month)],
                )
        cursor.execute("CREATE TABLE ai_metrics_default PARTITION OF ai_metrics DEFAULT")
        _copy_into(cursor, "ai_metrics_unpartitioned", "ai_metrics")
        cursor.execute("DROP TABLE ai_metrics_unpartitioned")
        cursor.execute("ALTER SEQUENCE ai_metrics_id_partitioned_seq RENAME TO ai_metrics_id_seq")
        for _name, sql in indexes:
            cursor.execute(sql)
        cursor.execute("ANALYZE ai_metrics")


def unpartition_events(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE ai_metrics IN ACCESS EXCLUSIVE MODE")
        indexes = [(name, sql.replace(" ON ONLY ", " ON ")) for name, sql in _table_indexes(cursor, "ai_metrics")
                   if name != "ai_metrics_pkey"]
        cursor.execute("ALTER TABLE ai_metrics RENAME TO ai_metrics_partitioned")
        cursor.execute("ALTER TABLE ai_metrics_partitioned RENAME CONSTRAINT ai_metrics_pkey TO ai_metrics_partitioned_pkey")
        for name, _sql in indexes:
            cursor.execute(f"ALTER INDEX {name} RENAME TO {name}_p")
        cursor.execute("CREATE TABLE ai_metrics (LIKE ai_metrics_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute("ALTER SEQUENCE ai_metrics_id_seq OWNED BY ai_metrics.id")
        cursor.execute("ALTER TABLE ai_metrics ADD CONSTRAINT ai_metrics_pkey PRIMARY KEY (id)")
        _copy_into(cursor, "ai_metrics_partitioned", "ai_metrics")
        cursor.execute("DROP TABLE ai_metrics_partitioned CASCADE")
        for _name, sql in indexes:
            cursor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ('metrics_app', '0018_erasure_record'),
    ]

    operations = [
        migrations.CreateModel(
            name='EventKey',
            fields=[
                ('pk', models.CompositePrimaryKey('business_id', 'event_id', blank=True, editable=False, primary_key=True, serialize=False)),
                ('business_id', models.CharField(max_length=255)),
                ('event_id', models.UUIDField()),
            ],
            options={
                'db_table': 'mlops_event_key',
            },
        ),
        migrations.CreateModel(
            name='PrunedTotals',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('business_id', models.CharField(max_length=255)),
                ('model_name', models.CharField(blank=True, max_length=100)),
                ('intent', models.CharField(blank=True, max_length=100)),
                ('response_type', models.CharField(blank=True, max_length=50)),
                ('events', models.BigIntegerField(default=0)),
                ('failed', models.BigIntegerField(default=0)),
                ('tokens', models.BigIntegerField(default=0)),
                ('client_cost', models.DecimalField(decimal_places=10, default=0, max_digits=30)),
                ('requested', models.BigIntegerField(default=0)),
                ('booked', models.BigIntegerField(default=0)),
                ('handoffs', models.BigIntegerField(default=0)),
                ('histograms', models.JSONField(default=dict)),
            ],
            options={
                'verbose_name_plural': 'pruned totals',
                'db_table': 'mlops_pruned_totals',
            },
        ),
        migrations.CreateModel(
            name='RetentionState',
            fields=[
                ('name', models.CharField(max_length=32, primary_key=True, serialize=False)),
                ('pruned_before', models.DateTimeField(blank=True, help_text='No raw event before this time is stored; None when nothing was pruned.', null=True)),
                ('events_pruned', models.BigIntegerField(default=0, help_text='Raw events removed by retention in all.')),
                ('last_run_at', models.DateTimeField(blank=True, null=True)),
                ('last_run_events', models.BigIntegerField(default=0, help_text='Raw events removed by the last run.')),
                ('last_run_summary', models.TextField(blank=True)),
            ],
            options={
                'verbose_name': 'retention state',
                'db_table': 'mlops_retention_state',
            },
        ),
        migrations.AlterField(
            model_name='aimetric',
            name='business',
            field=models.ForeignKey(db_column='business_id', db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='metrics_app.business'),
        ),
        migrations.RunPython(fill_event_keys, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name='aimetric', name='ai_metrics_business_event_uniq'),
        migrations.RunPython(partition_events, unpartition_events),
        migrations.AddConstraint(
            model_name='prunedtotals',
            constraint=models.UniqueConstraint(fields=('business_id', 'model_name', 'intent', 'response_type'), name='pruned_totals_labels_uniq'),
        ),
    ]
