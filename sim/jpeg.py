"""Camera frames for the simulator: a real baseline JPEG, made unique per snapshot.

The frame is a 96x64 road scene encoded once with Pillow (quality 55) and
embedded here, so the simulator needs no image library. Each snapshot gets a
JPEG comment (COM) segment naming the ambulance and the shot: the bytes differ,
so the bridge's content-derived snapshot id never mistakes a new shot for a
redelivery, and decoders ignore the comment.
"""

from __future__ import annotations

import base64
import struct

_FRAME = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA4KCw0LCQ4NDA0QDw4RFiQXFhQUFiwgIRokNC43NjMuMjI6QVNGOj1O"
    "PjIySGJJTlZYXV5dOEVmbWVabFNbXVn/2wBDAQ8QEBYTFioXFypZOzI7WVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZ"
    "WVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVn/wAARCABAAGADASIAAhEBAxEB/8QAGQAAAwEBAQAAAAAAAAAAAAAA"
    "AAEDBAIF/8QAKxAAAgIBAgQFBAMBAAAAAAAAAAECEQMEIRITFDEFM1NxkiIyQWE0UYHB/8QAGQEAAwEBAQAAAAAA"
    "AAAAAAAAAAEDAgUE/8QAHxEAAgIDAQADAQAAAAAAAAAAAAECEQQSMQMyQXGB/9oADAMBAAIRAxEAPwClBQ6HTPa4"
    "pdOek3xHNBR1TFQkk+MGmuoVBQ6CjWgrFQUOgoNAsVBRXD5sTUR9JaOqLeflurswUFG8xz8yXuw85buqD08tFdhQ"
    "woCmbGtf6bxfsBDCjOFG5MeTxCoKHQUdHQ8dioKHQUGgWdYfNRpM+LzEaDmZiqa/D3Y3wAyT++XuazNNfXL3NYUb"
    "kzOTxHgFOdl9WfyZMDmCKc7L6s/kzhtttt22I4lP8IaTY0mxylXbuPTYup1eHDxcPNnGHFV1bokV0sJ5NVhhilwZ"
    "JTioyuqbezsso6otGNFfEtJ0Guyabmczgr6qq7Sfb/SMZ3sy3iWHPp9dkxarJzc0a4p8Tleyrd/oyiS2irCSTNEZ"
    "ShJSjJxkvynR31Of1snzZnjP8M7JNOJFpor1Of1snzZNtybbbbe7bEAhWAA2l3JylfsajFyHGNhKd7LscgBdJLhZ"
    "KgK6Xm9Vh5HncceDt917d/2SKYMssGox5oJOWOSmk+1p2D4Mt4l1XXZOu/kbcfb+lXbbtRlNGt1c9dq56jKoqc6t"
    "RW2yr/hnFG1FWDA6jKvY5AbV9E1ZZbgSUmiqafYhKLRKUaP/2Q=="
)

# SOI (2 bytes) then the JFIF APP0 segment; the comment goes right after APP0,
# where the JFIF specification wants APP0 to stay first.
_APP0_END = 4 + struct.unpack(">H", _FRAME[4:6])[0]
_MAX_COMMENT = 0xFFFF - 2


def frame(comment: str = "") -> bytes:
    """The embedded JPEG with ``comment`` in a COM segment (none when empty)."""
    if not comment:
        return _FRAME
    text = comment.encode("utf-8")[:_MAX_COMMENT]
    segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
    return _FRAME[:_APP0_END] + segment + _FRAME[_APP0_END:]
