from django.db import migrations, models

from planner.plan_triggers import trigger_sql


def _run(generation: int, which: int):
    def run(apps, schema_editor):
        for statement in trigger_sql(schema_editor.connection.vendor, generation)[which]:
            schema_editor.execute(statement)

    return run


CREATE, DROP = 0, 1


class Migration(migrations.Migration):
    dependencies = [
        ("planner", "0010_plan_scope"),
    ]

    # The triggers go first: SQLite rebuilds the pools table to add the columns,
    # and a trigger of another table that writes the pools table would fail the
    # rename (see planner/plan_triggers.py). Generation 2 writes the new columns.
    operations = [
        migrations.RunPython(_run(1, DROP), _run(1, CREATE)),
        migrations.AddField(
            model_name="egresspool",
            name="plan_version",
            field=models.BigIntegerField(
                default=0,
                editable=False,
                help_text=(
                    "Bumped by every change to an input of this pool's plan, its slices included"
                ),
            ),
        ),
        migrations.AddField(
            model_name="egresspool",
            name="plan_stamp",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.RunPython(_run(2, CREATE), _run(2, DROP)),
    ]
