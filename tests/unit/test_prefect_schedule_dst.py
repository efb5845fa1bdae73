"""Cron schedules on daylight-saving days (Europe/Berlin, the recipes' default timezone), as
the Prefect server computes them (`prefect.server.schemas.schedules.CronSchedule`, what its
scheduler service uses): a job in the skipped or the repeated hour runs once, not zero or two
times. Pinned here because the README promises it; a Prefect upgrade that changes it fails."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prefect.server.schemas.schedules import CronSchedule

from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
BERLIN = ZoneInfo("Europe/Berlin")
SPRING, AUTUMN = dt.date(2027, 3, 28), dt.date(2027, 10, 31)  # 02:00->03:00, 03:00->02:00


def _runs(cron: str, day: dt.date, tz: str = "Europe/Berlin") -> list[dt.datetime]:
    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(), BERLIN)
    dates = CronSchedule(cron=cron, timezone=tz).get_dates(
        n=100, start=start, end=start + dt.timedelta(days=3)
    )
    if asyncio.iscoroutine(dates):
        dates = asyncio.run(dates)
    return [d.astimezone(BERLIN) for d in dates if d.astimezone(BERLIN).date() == day]


def test_a_job_in_the_skipped_hour_runs_once_an_hour_later():
    assert [d.strftime("%H:%M %Z") for d in _runs("30 2 * * *", SPRING)] == ["03:30 CEST"]


def test_a_job_in_the_repeated_hour_runs_once_at_its_first_occurrence():
    assert [d.strftime("%H:%M %Z") for d in _runs("30 2 * * *", AUTUMN)] == ["02:30 CEST"]


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_the_bundled_schedules_run_once_a_day_on_both_change_days(recipe):
    schedule = load_recipe(recipe).schedule
    if schedule is None:
        pytest.skip("no schedule")
    cron = " ".join([*schedule.cron.split()[:2], "*", "*", "*"])  # every day, same time
    for day in (SPRING, AUTUMN):
        per_day = Counter(d.date() for d in _runs(cron, day, schedule.timezone))
        assert per_day == {day: 1}, (recipe.name, day, per_day)
