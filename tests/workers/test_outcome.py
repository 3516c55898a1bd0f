"""How a pipeline failure becomes the job's error: stable codes, nothing internal leaked."""

from __future__ import annotations

import pytest
import torch

from media.errors import MediaTooLong, MediaUnreadable, MediaUnsupported
from workers.engine.recovery import ResourcesExhausted
from workers.outcome import error_of


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (MediaUnreadable("the video stream has no decodable frame"), "media_unreadable"),
        (MediaUnsupported("encrypted PDFs are not supported"), "media_unsupported"),
        (MediaTooLong("the media is longer than 4 h"), "media_too_long"),
    ],
)
def test_media_errors_keep_their_code_and_message(exc, code):
    error = error_of(exc, "job_x")
    assert error.code == code and error.message == exc.message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError("CUDA out of memory at /srv/app/workers/model/moe.py:88"), "model_error"),
        (ValueError("shape mismatch in /srv/app/x.py"), "model_error"),
        (KeyError("/srv/app/secret-path"), "internal"),
    ],
)
def test_unexpected_errors_are_generic(exc, code, caplog):
    error = error_of(exc, "job_x")
    assert error.code == code
    assert "/srv/app" not in error.message, "no server path reaches the client"
    assert "job_x" in caplog.text, "the traceback goes to the log instead"


def test_out_of_memory_is_resources_exhausted_never_model_error(caplog):
    exhausted = ResourcesExhausted("prefill")
    assert error_of(exhausted, "job_x").model_dump() == {
        "code": "resources_exhausted",
        "message": exhausted.message,
    }
    unrecovered = error_of(torch.OutOfMemoryError("CUDA out of memory. Tried 2.49 GiB"), "job_x")
    assert unrecovered.code == "resources_exhausted" and "GiB" not in unrecovered.message
