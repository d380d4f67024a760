"""jobs.demo_data: a rerun resumes only on raw data generated with the same settings."""

import dataclasses

import pytest

from jobs import demo_data, make_dataset


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    raw = make_dataset.Config(tmp_path / "raw", demos=1, rollouts=0, seed=0, workers=0)
    make_dataset.main(raw)  # the first step of demo_data --demos 1 --rollouts 0 --seed 0
    demo_data.check_raw(raw.output, dataclasses.replace(raw, workers=1))  # how it was made does not matter
    with pytest.raises(ValueError, match=r"other settings \(demos: recorded 1, now 3; rollouts: recorded 0, now 2; "
                                         r"seed: recorded 0, now 7\)"):  # fmt: skip
        demo_data.main(demo_data.Config(tmp_path, demos=3, rollouts=2, seed=7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # nothing derived from the stale data
