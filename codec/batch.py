"""Folders through the codec: `python -m codec encode DIR OUT_DIR` and `decode DIR OUT_DIR`.

Encoding codes every image of DIR (not its sub-folders) to OUT_DIR/<name>.dfcx, decoding every
DIR/*.dfcx to OUT_DIR/<name>.png, with the one codec (model loaded once) the caller passes. Each
output is written atomically (a temporary file in OUT_DIR, then a rename), so an output that exists
is complete: a rerun after a crash or a kill skips it and codes only the rest. A file that cannot be
coded (not an image, a corrupt bitstream) becomes an error row and the run goes on.

OUT_DIR/summary.csv has one row per input (file, bytes, bpp, t, steps, ms, error), in input order,
rewritten atomically at the end. Rows are also appended as files finish, so that after a kill the
rerun still knows the times of the files it skips; a skipped file's other columns are read from its
bitstream's header.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from codec.core.bitstream import MAX_FILE_BYTES, BitstreamError, describe
from codec.data.files import write_atomically, write_png

BITSTREAM_SUFFIX = ".dfcx"
SUMMARY = "summary.csv"


class BatchError(ValueError):
    """A folder run that cannot start (no such folder, nothing to code, two inputs for one output)."""


@dataclass
class Row:
    file: str  # the input's name in DIR
    bytes: int | None = None  # of the bitstream
    bpp: float | None = None
    t: int | None = None
    steps: int | None = None
    ms: float | None = None  # coding time of this file (empty if it was coded by a run whose times are lost)
    error: str = ""
    skipped: bool = False  # done by an earlier run (not a column)


COLUMNS = [f.name for f in fields(Row) if f.name != "skipped"]


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


class Batch:
    """The files of one folder run; `run(codec)` codes those not done yet and yields a Row per file."""

    suffixes: tuple[str, ...]  # of the inputs
    output_suffix: str

    def __init__(self, source_dir: Path, out_dir: Path):
        if not source_dir.is_dir():
            raise BatchError(f"No such folder: {source_dir}")
        if out_dir.exists() and not out_dir.is_dir():
            raise BatchError(f"{out_dir} is a file; a folder of inputs needs an output folder.")
        sources = sorted(p for p in source_dir.iterdir()
                         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in self.suffixes)
        if not sources:
            raise BatchError(f"No {'/'.join(self.suffixes)} files in {source_dir}")
        self.jobs, by_output = [], {}
        for source in sources:
            job = Job(source, out_dir / (source.stem + self.output_suffix))
            if job.output in by_output:
                raise BatchError(f"{by_output[job.output].name} and {source.name} would both be written "
                                 f"to {job.output.name}; rename one of them.")
            by_output[job.output] = source
            self.jobs.append(job)
        self.out_dir, self.summary = out_dir, out_dir / SUMMARY

    def __len__(self) -> int:
        return len(self.jobs)

    def run(self, codec, **options) -> Iterator[Row]:
        """Code each job not done yet with `codec` (a DiffusionCodec), in order; yield every job's row."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        earlier = _read_rows(self.summary)
        limits = (codec.max_pixels, codec.max_steps)
        rows = []
        with self.summary.open("a", newline="") as log:
            if log.tell() == 0:
                log.write(_csv_line(COLUMNS))
            elif not _ends_with_newline(self.summary):
                log.write("\r\n")  # after a line a kill cut short (which _read_rows left out)
            for job in self.jobs:
                row = self._done_row(job, earlier.get(job.source.name), limits)
                if row is None:
                    start = time.perf_counter()
                    try:
                        data = self._code(codec, job, options)
                        row = _row(job, data, limits, ms=round(1000 * (time.perf_counter() - start), 1))
                    except (ValueError, OSError) as exc:  # BitstreamError and ImageError are ValueErrors
                        row = Row(job.source.name, error=str(exc) or type(exc).__name__)
                    log.write(_row_line(row))
                    log.flush()
                rows.append(row)
                yield row
        write_atomically(self.summary, "".join([_csv_line(COLUMNS), *map(_row_line, rows)]).encode())

    def _code(self, codec, job: Job, options: dict) -> bytes:
        """Code one file, write job.output atomically, return the bitstream."""
        raise NotImplementedError

    def _bitstream(self, job: Job) -> bytes:
        """The bitstream of a job done earlier, whose header gives that file's row."""
        raise NotImplementedError

    def _done_row(self, job: Job, earlier: Row | None, limits) -> Row | None:
        """The row of a job an earlier run finished (its output exists), or None if it is still to do."""
        if not job.output.is_file():
            return None
        try:
            row = _row(job, self._bitstream(job), limits, earlier.ms if earlier and not earlier.error else None)
        except (BitstreamError, OSError):
            return None  # not a file this codec wrote (or no longer readable): code it again
        row.skipped = True
        return row


class EncodeBatch(Batch):
    """Every image of DIR -> OUT_DIR/<name>.dfcx (options: those of DiffusionCodec.encode)."""

    output_suffix = BITSTREAM_SUFFIX

    @property
    def suffixes(self) -> tuple[str, ...]:
        from codec.data.datasets import IMAGE_SUFFIXES  # with PIL: not imported for `info`, which reads this module

        return IMAGE_SUFFIXES

    def _code(self, codec, job: Job, options: dict) -> bytes:
        data = codec.encode(job.source, **options).data
        write_atomically(job.output, data)
        return data

    def _bitstream(self, job: Job) -> bytes:
        return read_bitstream(job.output)


class DecodeBatch(Batch):
    """Every DIR/*.dfcx -> OUT_DIR/<name>.png."""

    suffixes, output_suffix = (BITSTREAM_SUFFIX,), ".png"

    def _code(self, codec, job: Job, options: dict) -> bytes:
        data = read_bitstream(job.source)
        write_png(job.output, codec.decode(data).image)
        return data

    def _bitstream(self, job: Job) -> bytes:
        return read_bitstream(job.source)


def _row(job: Job, data: bytes, limits, ms: float | None) -> Row:
    header = describe(data, *limits)
    return Row(job.source.name, header["bytes"], round(header["bpp"], 6), header["t"], header["steps"], ms)


def read_bitstream(path: Path) -> bytes:
    """The file at `path`, read up to one byte past the format's size limit: a larger file is refused
    by the parser without having been read whole."""
    if not path.is_file():
        raise OSError(f"No such file: {path}")
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _read_rows(summary: Path) -> dict[str, Row]:
    """The rows of an earlier run's summary (a row cut short by a kill is left out)."""
    if not summary.is_file():
        return {}
    rows = {}
    with summary.open(newline="") as f:
        for record in csv.DictReader(f):
            if None in record.values() or None in record:  # a line cut short, or one with extra fields
                continue
            try:
                row = Row(record["file"], error=record["error"],
                          ms=float(record["ms"]) if record["ms"] else None)
            except (KeyError, ValueError):
                continue
            rows[row.file] = row
    return rows


def _row_line(row: Row) -> str:
    values = asdict(row)
    return _csv_line(["" if values[c] is None else values[c] for c in COLUMNS])


def _csv_line(values: list) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue()
