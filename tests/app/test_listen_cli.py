"""``python -m app.cli.listen``: its options become the SEG_LISTENER_* settings, validated like them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.cli.listen import parse
from app.config import Settings


def test_options_become_listener_settings():
    argv = ["--port", "11113", "--calling-aets", "ORTHANC, PACS2", "--destination", "ORTHANC@pacs:4242"]
    settings = Settings(_env_file=None, listener_enabled=True, **parse(argv))
    assert settings.listener_port == 11113 and settings.listener_calling_aets == ["ORTHANC", "PACS2"]
    assert settings.listener_destination == "ORTHANC@pacs:4242"
    assert settings.listener_ae_title == "BRATS" and settings.listener_quiet_seconds == 10  # defaults kept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "SEG_LISTENER_CALLING_AETS"),  # nobody allowed to send: refused at start, not silently idle
        (["--calling-aets", "A", "--destination", "pacs:4242"], "AET@host:port"),
    ],
)
def test_a_listener_that_cannot_work_is_refused_at_start(argv, message):
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, listener_enabled=True, **parse(argv))
