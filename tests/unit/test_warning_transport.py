"""A warning quoting fuzzed bytes must still cross from an xdist worker to the controller."""

from __future__ import annotations

import warnings

import execnet
import pytest
from xdist.remote import serialize_warning_message

from tests.conftest import pytest_warning_recorded


def test_a_lone_surrogate_in_a_warning_is_escaped_before_xdist_sends_it() -> None:
    recorded = warnings.WarningMessage(
        RuntimeWarning("bad header 'form-data; name=\udcd2'"), RuntimeWarning, "multipart.py", 115
    )
    with pytest.raises(execnet.DumpError):  # what ended a whole CI run
        execnet.dumps(serialize_warning_message(recorded))
    pytest_warning_recorded(recorded)
    sent = execnet.loads(execnet.dumps(serialize_warning_message(recorded)))
    assert sent["message_str"] == "bad header 'form-data; name=\\udcd2'"
