"""Reading submit bodies as a stream: nothing larger than a chunk is ever held in memory.

The multipart form is parsed incrementally with python-multipart; the `file` part goes straight
into an InputSink (which enforces the upload cap while bytes arrive), the other parts (the
job's `request`, a file's `purpose`) are small text kept in memory under REQUEST_PART_MAX. A
body whose client stops sending is cut off after an idle timeout (`idle_timeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BadRequest, PayloadTooLarge, RequestTimeout
from service.input_sink import InputSink

REQUEST_PART_MAX = 256 * 1024
JSON_BODY_MAX = REQUEST_PART_MAX  # the JSON door carries the same request, with input.url
JSON_BODY_TOO_LARGE = f"a JSON body is limited to {JSON_BODY_MAX // 1024} KiB"


async def idle_timeout(stream: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """`stream`, cut off with RequestTimeout (408, connection closed) when no byte of it
    arrives for `timeout_s`: a client that stalls mid-body does not hold a connection, a
    thread of work and a partial input file forever."""
    chunks = aiter(stream)
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeout(f"the request body stalled for {timeout_s:g} s") from exc
        yield chunk


async def read_small_body(stream: AsyncIterator[bytes]) -> bytes:
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > JSON_BODY_MAX:
            raise PayloadTooLarge(JSON_BODY_TOO_LARGE)
    return bytes(body)


class _FormReader:
    """python-multipart callbacks that route the parts of one submit form."""

    def __init__(self, open_sink: Callable[[dict[str, bytes]], InputSink], fields: tuple[str, ...]):
        self.open_sink = open_sink
        self.fields = fields
        self.sink: InputSink | None = None
        self.filename: str | None = None
        self.values: dict[str, bytearray] = {}
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._target = None
        self.seen: set[str] = set()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda d, s, e: self._target(d[s:e]),
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("latin-1")
        if name in self.seen:
            raise BadRequest(f"the form has more than one {name!r} part")
        self.seen.add(name)
        if name == "file":
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace") or None
            self.sink = self.open_sink({k: bytes(v) for k, v in self.values.items()}).__enter__()
            self._target = self.sink.write
        elif name in self.fields:
            value = self.values[name] = bytearray()
            self._target = lambda data: self._field_data(name, value, data)
        else:
            expected = ", ".join(repr(f) for f in ("file", *self.fields))
            raise BadRequest(f"unexpected form part {name!r}; send {expected}")

    @staticmethod
    def _field_data(name: str, value: bytearray, data: bytes) -> None:
        value += data
        if len(value) > REQUEST_PART_MAX:
            limit = REQUEST_PART_MAX // 1024
            raise PayloadTooLarge(f"the {name!r} part is limited to {limit} KiB")


@dataclass(frozen=True)
class Form:
    values: dict[str, bytes]  # the small parts that were sent, by name
    sink: InputSink | None  # the `file` part, closed; None when the form had none
    filename: str | None  # the `file` part's filename as the client named it (never a path)


async def read_form(
    stream: AsyncIterator[bytes], content_type: str, open_sink: Callable[[], InputSink]
) -> tuple[bytes | None, InputSink | None]:
    """Parse a multipart submit; returns (request JSON bytes or None, the closed sink or None)."""
    form = await read_form_parts(stream, content_type, lambda _values: open_sink(), ("request",))
    return form.values.get("request"), form.sink


async def read_form_parts(
    stream: AsyncIterator[bytes],
    content_type: str,
    open_sink: Callable[[dict[str, bytes]], InputSink],
    fields: tuple[str, ...],
) -> Form:
    """Parse a multipart form of one `file` part and the small text parts `fields`.
    `open_sink` gets the small parts that came before the file (to pick its cap)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    reader = _FormReader(open_sink, fields)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        _discard(reader.sink, exc)
        raise BadRequest("the multipart body is malformed") from exc
    except BaseException as exc:
        _discard(reader.sink, exc)
        raise
    if reader.sink is not None:
        reader.sink.__exit__(None, None, None)
    values = {k: bytes(v) for k, v in reader.values.items()}
    return Form(values, reader.sink, reader.filename)


def _discard(sink: InputSink | None, exc: BaseException) -> None:
    if sink is not None:
        sink.__exit__(type(exc), exc, None)
