"""The public healthy logs stay quiet when logged differently (bench/detection/real_log_stress.py):
every k-th step, interval means, resumed part-way, without time, smoothed (an EMA, a running
mean), or with a +10-20 % bump that recovers; and the same logs alarm when their loss rises
for good."""

from __future__ import annotations

import pytest

# (bench/detection is on sys.path: tests/conftest.py)
import real_log_stress as rls
from repo_paths import REAL_LOGS_DIR

LOGS = sorted(REAL_LOGS_DIR.glob("*.csv")) + sorted(
    (REAL_LOGS_DIR.parent / "real-logs-2").glob("*.csv")
)

pytestmark = pytest.mark.skipif(not LOGS, reason=f"no real logs in {REAL_LOGS_DIR}")


@pytest.fixture(scope="module")
def logs():
    return {p.stem: rls.load(str(p)) for p in LOGS}


@pytest.mark.parametrize("name", list(rls.TRANSFORMS))
def test_no_alarm_on_a_real_healthy_log_however_it_was_logged(logs, name):
    found = {k: rls.first_alarm(rls.TRANSFORMS[name](rows)) for k, rows in logs.items()}
    assert not any(found.values()), {k: a for k, a in found.items() if a}


def test_the_transformations_do_what_they_say(logs):
    rows = logs[min(logs, key=lambda k: -len(logs[k]))]
    assert len(rls.TRANSFORMS["every 20th step"](rows)) == (len(rows) + 19) // 20
    mean10 = rls.TRANSFORMS["mean of 10 steps"](rows)
    assert mean10[0][1] == pytest.approx(sum(r[1] for r in rows[:10]) / 10)
    assert rls.TRANSFORMS["resumed at 60 %"](rows)[0] == rows[int(0.6 * len(rows))]
    run = rls.TRANSFORMS["running mean of 20 (smoothed)"](rows)
    assert run[30][1] == pytest.approx(sum(r[1] for r in rows[11:31]) / 20)


def test_a_real_log_whose_loss_rises_for_good_alarms(logs):
    # the same logs, their loss up 50 % over 50 rows from 60 % of the log and staying there:
    # the bump's gate does not mute a rise that lasts (every log long enough to judge)
    def rise(rows):
        at = int(0.6 * len(rows))
        return [(s, v * (1.0 + 0.5 * min(1.0, max(0.0, (i - at) / 50))), t)
                for i, (s, v, t) in enumerate(rows)]

    long_logs = {k: rows for k, rows in logs.items() if len(rows) >= 200}
    late = {k: rls.first_alarm(rise(rows)) for k, rows in long_logs.items()}
    assert len(long_logs) >= 10 and all(late.values()), late
    assert all(a[0] > rows[int(0.6 * len(rows))][0] for (k, rows), a in
               zip(long_logs.items(), late.values()))
