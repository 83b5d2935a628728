"""The hypothesis profile CI runs with (tests/conftest.py, selected by .ci/run)."""

from hypothesis import settings


def test_ci_profile_is_derandomized_without_a_deadline():
    profile = settings.get_profile("ci")
    assert profile.derandomize is True and profile.deadline is None
