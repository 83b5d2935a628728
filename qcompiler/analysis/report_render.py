"""Rendering for `qcompiler.report`: a report is a list of blocks (headings, paragraphs,
tables, figures), turned into one self-contained HTML file (figures inlined as base64
PNG) or a markdown file with its PNGs in a folder beside it, and written atomically.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas directly,
never through pyplot, so making a report changes no global matplotlib state.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qcompiler.errors import OutputPathError, import_optional


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    png: bytes
    caption: str


Block = Heading | Paragraph | Table | Image


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    purpose = "the report's figures (qcompiler.report)"
    agg = import_optional("matplotlib.backends.backend_agg", "bench", purpose)
    figure = import_optional("matplotlib.figure", "bench", purpose).Figure(
        figsize=(width, height), layout="constrained")
    agg.FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


# ---- HTML ------------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}img{max-width:100%}"""


def render_html(title: str, blocks: list[Block]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            caption = html.escape(block.caption)
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                         f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _cell(text: str) -> str:
    numeric = text.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit() \
        or text in ("inf", "-inf", "nan")
    return f'<td class="n">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


# ---- markdown --------------------------------------------------------------------------------


def render_markdown(title: str, blocks: list[Block], image_folder: str) -> tuple[str, dict[str, bytes]]:
    """The markdown text and the images it links to ({file name in image_folder: PNG})."""
    lines, images = [f"# {title}", ""], {}
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            escape = lambda text: text.replace("|", "\\|")
            lines.append("| " + " | ".join(escape(h) for h in block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        else:
            name = f"figure{len(images) + 1}.png"
            images[name] = block.png
            lines += [f"![{block.caption}]({image_folder}/{name})", "", f"*{block.caption}*", ""]
    return "\n".join(lines), images


# ---- writing ---------------------------------------------------------------------------------


_FILE_MODE, _FOLDER_MODE = 0o644, 0o755


def check_output_path(path, what: str = "output") -> Path:
    """`path` as a Path, if a file can be written there; else OutputPathError saying why.
    The directory must exist already: a typo in it should not create a tree of folders."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputPathError(f"{what} path {path} is a directory; give a file name in it")
    for parent in [directory, *directory.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{what} path {path}: {parent} is a file, not a directory")
    if not directory.exists():
        raise OutputPathError(f"{what} path {path}: directory {directory} does not exist (qcompiler "
                              "does not create directories; mkdir it first)")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} path {path}: permission denied (the file is read-only)")
    try:  # the one test that also holds for root and read-only file systems: write something
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise OutputPathError(f"{what} path {path}: cannot write into {directory} "
                              f"({error.strerror or error})") from None
    return path


def write_atomically(path: Path, text: str, images: dict[str, bytes] | None = None,
                     image_folder: Path | None = None) -> None:
    """Write `text` to `path` (and `images` into `image_folder`) so that a failure leaves
    the previous files, or none, never a half-written one: everything goes to temporary
    names in the same directory first, then is renamed into place. The directory must exist
    (`check_output_path`)."""
    directory = check_output_path(path).parent
    try:
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory,
                                             prefix=f".{path.name}.", suffix=".tmp", delete=False)
    except OSError as error:
        raise OutputPathError(f"writing {path} failed: {error.strerror or error}") from error
    temporary_folder = None
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # Temporary files are private (0600); a report is an ordinary readable file.
        os.chmod(handle.name, _FILE_MODE)
        if images is not None and image_folder is not None:
            temporary_folder = Path(tempfile.mkdtemp(dir=directory, prefix=f".{image_folder.name}."))
            os.chmod(temporary_folder, _FOLDER_MODE)
            for name, data in images.items():
                (temporary_folder / name).write_bytes(data)
            if image_folder.exists():
                shutil.rmtree(image_folder)
            temporary_folder.rename(image_folder)
            temporary_folder = None
        os.replace(handle.name, path)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        if temporary_folder is not None:
            shutil.rmtree(temporary_folder, ignore_errors=True)
        raise OutputPathError(f"writing {path} failed: {error.strerror or error}") from error
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        if temporary_folder is not None:
            shutil.rmtree(temporary_folder, ignore_errors=True)
        raise
