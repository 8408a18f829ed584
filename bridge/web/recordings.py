"""A call's recording, for the operator (token-protected).

    GET  /calls/<id>/recording      the call's stereo WAV (caller left, agent right) as a
                                    download; 404 when the call has none (not recorded,
                                    or deleted by the retention sweep), 409 while it is
                                    still being recorded (the header is written at the end)

Only a file inside ``[records] recordings_path`` is ever served: the record names the
path, but a record is data, and data does not choose which file leaves the machine.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, send_file
from quart.typing import ResponseReturnValue

from bridge.web.access import protected
from bridge.web.calls import NO_SUCH_CALL, find
from bridge.web.state import web_state

recordings = Blueprint("recordings", __name__)

NO_RECORDING = {"error": "no recording of this call"}


def recording_file(path: str, folder: str) -> Path | None:
    """``path`` if it is a file inside ``folder`` (both resolved), else None."""
    if not path or not folder:
        return None
    file = Path(path).resolve()
    if not file.is_relative_to(Path(folder).resolve()) or not file.is_file():
        return None
    return file


@recordings.get("/calls/<call_id>/recording")
@protected
async def call_recording(call_id: str) -> ResponseReturnValue:
    record, live = await find(call_id)
    if record is None:
        return NO_SUCH_CALL, 404
    if live and record.recording:
        return {"error": "the call is still being recorded"}, 409
    file = recording_file(record.recording, web_state().settings.records.recordings_path)
    if file is None:
        return NO_RECORDING, 404
    return await send_file(file, mimetype="audio/wav", as_attachment=True,
                           attachment_filename=f"{call_id}.wav")


__all__ = ["recording_file", "recordings"]
