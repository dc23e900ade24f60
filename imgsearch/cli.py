"""The command line: parsing and printing only; every action goes through ``imgsearch.api``."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from imgsearch import config, relations, report, scoring
from imgsearch.api import Index, MoveStopped, parse_size
from imgsearch.captions import DEFAULT_SETTINGS
from imgsearch.errors import ImgsearchError
from imgsearch.files import Limits
from imgsearch.indexer import skip_counts
from imgsearch.projections import PROJECTIONS
from imgsearch.results import Graph, IndexSummary, Skipped, Text
from imgsearch.scoring import check_score
from imgsearch.storage import is_disk_full

if TYPE_CHECKING:
    from imgsearch.watch import Batch, Watcher  # imported when `watch` runs: no watchdog else

# --db: a SQLite file path, or a database URL (anything with '://') kept as text.
Db = Path | str | None


def db_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Db:
    return value if value is None or "://" in value else Path(value)


db_option = click.option(
    "--db",
    metavar="PATH|URL",
    callback=db_value,
    help="Index database: a SQLite file (default: FOLDER/.imgsearch/index.db, or found from "
    "the current folder) or a URL, postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
captions_option = click.option(
    "--captions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Caption bank for a new index: a text file, one caption a line (default: packaged).",
)
html_option = click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page with thumbnails to this file.",
)
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    help="Where the model runs (default: CUDA, then MPS, then CPU).",
)


def say(message: str) -> None:
    """Notes for the user go to stderr; stdout carries only results."""
    click.echo(f"imgsearch: {message}", err=True)


class BadValue(click.BadParameter):
    """A bad option value: one line on stderr and exit 2 (click's usage errors take three)."""

    def show(self, file: object = None) -> None:
        say(f"error: {self.format_message()}")


class Score(click.ParamType):
    """A score threshold: a finite number from -1 to 1 (centred scores of unrelated photos
    are negative), or with ``low_open`` above ``low``. Every --tau, --min-pair and
    --threshold takes one; the API checks the same (``check_score``)."""

    name = "score"

    def __init__(self, low: float = -1.0, high: float = 1.0, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if isinstance(value, float):
            return value
        try:
            return check_score(value, "", self.low, self.high, self.low_open)
        except ImgsearchError as exc:
            raise BadValue(str(exc), ctx=ctx, param=param) from None


SCORE = Score()


def parse_count(text: str) -> int:
    """A pixel count: '100M', '2.5M', '500k' or a plain number (decimal units)."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
    number, unit = text.strip().lower().rstrip("px").rstrip(), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = 0
    if not (value >= 1 and value < 1e15):
        raise ImgsearchError(f"bad pixel count {text!r}: give e.g. 100M or 50000000")
    return int(value)


def parse_aspect(text: str) -> float:
    """An aspect ratio limit: '50' or '50:1'."""
    number = text.strip().removesuffix(":1")
    try:
        value = float(number)
    except ValueError:
        value = 0.0
    if not (value >= 1 and value < 1e15):
        raise ImgsearchError(f"bad aspect ratio {text!r}: give e.g. 50 (for 50:1)")
    return value


def shared_text(shared: list[str], most: int = 5) -> str:
    """The first few shared captions: a long list would bury the results."""
    if not shared:
        return "(no caption)"
    more = f" (+{len(shared) - most} more)" if len(shared) > most else ""
    return "; ".join(shared[:most]) + more


def emit(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def read_list(path: Path) -> list[str]:
    """Paths from a text file, one a line; blank lines and lines starting with # are skipped."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ImgsearchError(f"cannot read the list of files {path}: {reason}") from None
    return [s for s in (line.strip() for line in text.splitlines()) if s and s[0] != "#"]


# SQLAlchemy logs a connection it failed to close with a full traceback, e.g. when Ctrl-C
# lands mid-close; the interrupted command already says in one line what happened.
logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())


class Choice(click.Choice):
    """A choice whose wrong value is one line on stderr, as every other bad value is."""

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise BadValue(exc.message, ctx=ctx, param=param) from None


class MethodChoice(Choice):
    """The scoring methods registered when the command runs (``imgsearch.scoring``), not
    when this module was imported: a method registered by a program is offered too."""

    def __init__(self, ranking: bool = True):
        self.ranking = ranking
        super().__init__([])

    @property
    def choices(self) -> list[str]:  # type: ignore[override]
        return scoring.names(self.ranking)

    @choices.setter
    def choices(self, _value: object) -> None:
        pass


class Group(click.Group):
    """Turns every expected failure into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except ImgsearchError as exc:
            say(f"error: {exc}")
            ctx.exit(1)
        except KeyboardInterrupt:
            say("interrupted; what was finished is saved, run the command again to go on")
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`imgsearch clusters | head`): nothing more to say to it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback for the user
            if os.environ.get("IMGSEARCH_DEBUG"):
                raise
            if is_disk_full(exc):
                where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
                say(
                    f"error{where}: {exc.strerror} (the disk is full); the index is intact: "
                    "free some space and run the command again"
                )
                ctx.exit(1)
            say(f"error: {type(exc).__name__}: {exc} (set IMGSEARCH_DEBUG=1 for details)")
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgsearch")
def main() -> None:
    """Find similar images through the captions a vision-language model picks for them."""
    # At exit, skip the interpreter's last collections over every object (the process is
    # ending): they took 0.3-0.5 s of a 2 s query on a busy 2-core machine.
    atexit.register(gc.freeze)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@db_option
@click.option(
    "--model",
    help="CLIP or SigLIP checkpoint id or folder, or 'offline' (default: CLIP if it "
    "can be loaded, else offline; an existing index keeps its own).",
)
@captions_option
@click.option(
    "--top-n",
    type=int,
    help=f"Captions kept per image, new index only (default: {DEFAULT_SETTINGS.top_n}).",
)
@click.option("--batch-size", type=int, default=config.BATCH_SIZE, show_default=True)
@click.option("--workers", type=int, help="Decoding threads (default: one per core, at most 32).")
@device_option
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    metavar="[ADDRESS]",
    help="Embed on a Ray cluster: HOST:PORT, ray://HOST:PORT, or no value (auto): the "
    "cluster this machine belongs to, else a local one. Needs imgsearch[ray].",
)
@click.option(
    "--ray-workers", type=int, help="Model workers with --ray (default: one per GPU, else 1)."
)
@click.option(
    "--files-from",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Only these files: a text file of image paths, one a line (absolute or relative to "
    "FOLDER). Indexed files not listed are kept as they are.",
)
@click.option(
    "--index-memory",
    metavar="SIZE",
    help="Memory budget of the search index, e.g. 4GB or 512MB, kept for later queries "
    "(default: 4GB). Where the vectors would exceed it, a compressed index is built.",
)
@click.option(
    "--max-pixels",
    metavar="COUNT",
    help=f"Skip an image that would decode to more pixels, e.g. 100M (after a JPEG's reduced "
    f"decode; default {Limits().max_pixels // 10**6}M). Kept for later runs, queries and uploads.",
)
@click.option(
    "--max-aspect",
    metavar="RATIO",
    help=f"Skip an image longer than this many times its width (or the reverse), e.g. 50 for "
    f"50:1 (default {Limits().max_aspect:g}). Kept like --max-pixels.",
)
@click.option(
    "--max-file-size",
    metavar="SIZE",
    help="Skip a file larger than this, e.g. 1GB or 200MB (default 1GB). Kept like --max-pixels.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no per-file notes.")
@json_option
def index(
    folder: Path,
    db: Db,
    model: str | None,
    captions: Path | None,
    top_n: int,
    batch_size: int,
    workers: int | None,
    device: str,
    ray_address: str | None,
    ray_workers: int | None,
    files_from: Path | None,
    index_memory: str | None,
    max_pixels: str | None,
    max_aspect: str | None,
    max_file_size: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Index every image in FOLDER (recursively); a re-run only does what changed."""
    started = time.perf_counter()  # the summary's time is the whole run: model, bank and all
    files = read_list(files_from) if files_from else None
    budget = parse_size(index_memory) if index_memory is not None else None
    limits = {
        "max_pixels": parse_count(max_pixels) if max_pixels is not None else None,
        "max_aspect": parse_aspect(max_aspect) if max_aspect is not None else None,
        "max_file_size": parse_size(max_file_size) if max_file_size is not None else None,
    }
    if ray_address is not None:  # before a new index loads its model
        from imgsearch.distributed import check_address, require_ray

        require_ray()
        check_address(ray_address)
    elif ray_workers is not None:
        raise ImgsearchError("--ray-workers needs --ray")
    with Index.create(folder, db, model, captions, top_n, device, say=None if quiet else say) as ix:
        if budget is not None:
            ix.set_index_memory(budget)
        if any(v is not None for v in limits.values()):
            ix.set_limits(**limits)
        summary = ix.add(
            batch_size=batch_size,
            workers=workers,
            progress=not quiet,
            on_skip=None if quiet else lambda s: say(f"skipped {s.path}: {s.reason}"),
            files=files,
            ray=ray_address,
            ray_workers=ray_workers,
        )
        if budget is not None and ix.store.count():
            built = ix.search_index()  # to the new budget, even where no file changed
            if not quiet:
                say(
                    f"search index: {built.kind}, {built.memory_bytes() / 2**20:.1f} MB in "
                    f"memory (budget {budget / 2**20:.1f} MB)"
                )
        note = coverage_note(ix)
        if ix.bank_outdated() and not quiet:
            say(
                "this index keeps the caption bank it was made with; this release's packaged "
                "bank has changed (colour captions): make a new index with --db NEW to use it"
            )
    summary.seconds = time.perf_counter() - started
    if note and not quiet:
        say(note)
    if as_json:
        emit(summary.to_dict())
        return
    click.echo(summary_line(summary))


def filter_options(command):  # noqa: ANN001, ANN201 - a click command
    """--after, --before, --camera and --under: which photos a command looks at."""
    for option in reversed(
        [
            click.option("--after", metavar="DATE", help="Only photos taken on or after "
                         "DATE (YYYY, YYYY-MM or YYYY-MM-DD; EXIF time, else file time)."),
            click.option("--before", metavar="DATE", help="Only photos taken before DATE."),
            click.option("--camera", help="Only photos whose camera make or model contains "
                         "this (any case)."),
            click.option("--under", type=click.Path(path_type=Path),
                         help="Only photos in this subfolder."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?):(.+)$", re.S)


def weighted(value: str) -> tuple[float, str]:
    """rclip's form: '2:snow' is 'snow' with weight 2; anything else has weight 1."""
    found = _WEIGHT.match(value)
    if found and not Path(value).exists():
        return float(found.group(1)), found.group(2)
    return 1.0, value


def query_terms(
    images: tuple[str, ...], texts: tuple[str, ...], nots: tuple[str, ...]
) -> tuple[list, list]:
    """The positive and negative terms of a combined query: images (weight prefixes
    allowed), texts, and --not values, each an image where such a file exists, else text."""
    positive: list = []
    for value in images:
        weight, path = weighted(value)
        positive.append((weight, Path(path)))
    for value in texts:
        weight, text = weighted(value)
        if not text.strip():
            raise ImgsearchError("the query text is empty: give --text some words")
        positive.append((weight, Text(text)))
    negative: list = []
    for value in nots:
        weight, item = weighted(value)
        if not item.strip():
            raise ImgsearchError("--not is empty: give a text or an image to rank down")
        negative.append((weight, Path(item) if Path(item).is_file() else Text(item)))
    return positive, negative


@main.command()
@click.argument("images", nargs=-1)
@click.option(
    "--text",
    "texts",
    multiple=True,
    help="A text to look for (repeat to combine; '2:snow' weighs it twice).",
)
@click.option(
    "--not",
    "nots",
    multiple=True,
    help="A text or an image to rank down (repeat; weights as for --text).",
)
@click.option("-k", "k", type=int, default=config.DEFAULT_K, show_default=True, help="Results.")
@filter_options
@click.option("--min-score", type=SCORE, help="Only results scoring at least this.")
@click.option(
    "--sort",
    type=click.Choice(["score", "date"]),
    default="score",
    show_default=True,
    help="date: the best -k above the related cutoff (or --min-score), newest first.",
)
@click.option("--explain", is_flag=True, help="Show the captions each hit shares with the query.")
@click.option(
    "--method",
    type=MethodChoice(),
    help="Scoring: caption space (tuned), the paper's caption average, image vectors, a mix, "
    "or shared concepts (default: the index's own: concepts for a new offline index, else "
    "caption; caption for a query with text).",
)
@db_option
@device_option
@html_option
@json_option
def query(
    images: tuple[str, ...],
    texts: tuple[str, ...],
    nots: tuple[str, ...],
    k: int,
    after: str | None,
    before: str | None,
    camera: str | None,
    under: Path | None,
    min_score: float | None,
    sort: str,
    explain: bool,
    method: str | None,
    db: Db,
    device: str,
    html_file: Path | None,
    as_json: bool,
) -> None:
    """Rank the indexed images by similarity to IMAGES and --text terms combined, minus the
    --not terms."""
    positive, negative = query_terms(images, texts, nots)
    if not positive:
        raise ImgsearchError("give one or more query images, or --text")
    has_text = any(isinstance(t, Text) for _, t in positive + negative)
    with Index.open(db, device=device) as ix:
        shared = explain or bool(html_file)  # a report always explains
        hits = ix.query(
            positive=positive,
            negative=negative,
            k=k,
            under=under,
            explain=shared,
            method=method,
            after=after,
            before=before,
            camera=camera,
            min_score=min_score,
            sort=sort,
        )
        # The threshold of the score that ranked: a query with text ranks by caption.
        ranked_by = method or ("caption" if has_text else ix.default_method)
        tau = ix.tau(ranked_by)
        note = coverage_note(ix) if ranked_by in ("caption", "caption_avg", "concepts") else None
        if html_file is not None:
            query_images = [t for _, t in positive if not isinstance(t, Text)]
            query_text = "; ".join(t.text for _, t in positive if isinstance(t, Text)) or None
            report.save(html_file, report.query_page(ix, hits, query_images, query_text))
            say(f"wrote {html_file}")
    if hits and hits[0].score < tau and sort == "score":
        say(f"no photo matches well: best {hits[0].score:.2f}, related above {tau:.2f}")
    if not hits and (min_score is not None or sort == "date"):
        say("no photo scores above the cutoff")
    if note:
        say(note)
    if as_json:
        emit(
            [
                {
                    "path": h.path,
                    "score": round(h.score, 6),
                    "related": h.score >= tau,
                    "taken": h.taken,
                    "taken_from": h.taken_from,
                    "camera": h.camera,
                    "gps": list(h.gps) if h.gps is not None else None,
                    **({"shared": h.shared} if explain else {}),
                }
                for h in hits
            ]
        )
        return
    dated = sort == "date" or after is not None or before is not None
    for hit in hits:
        when = f"  {hit.taken or '-':19}" if dated else ""
        click.echo(f"{hit.score:.4f}{when}  {hit.path}")
        if explain:
            click.echo(f"        shares: {shared_text(hit.shared)}")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@db_option
@device_option
@json_option
def captions(image: Path, db: Db, device: str, as_json: bool) -> None:
    """Show IMAGE's top-N captions: the explanation its similarities rest on."""
    with Index.open(db, device=device) as ix:
        found = ix.captions(image)
    if as_json:
        emit([{"caption": c.text, "score": round(c.score, 6)} for c in found])
        return
    for caption in found:
        click.echo(f"{caption.score:.4f}  {caption.text}")


@main.command()
@db_option
@json_option
def status(db: Db, as_json: bool) -> None:
    """Show the index's root, model, caption bank, size."""
    with Index.open(db) as ix:
        info = ix.status()
    if as_json:
        emit(info.to_dict())
        return
    click.echo(f"root:      {info.root}\ndatabase:  {info.db}\nmodel:     {info.model}")
    click.echo(f"captions:  {info.captions} ({info.caption_count} captions, top {info.top_n})")
    click.echo(f"images:    {info.images}\nsize:      {info.size_bytes / 1e6:.1f} MB")
    click.echo("tau:       " + ", ".join(f"{m} {t:g}" for m, t in info.tau.items()))
    if info.coverage is not None:
        click.echo(
            f"coverage:  {info.coverage:.2f} (captions fit loosely below {config.COVERAGE_LOW})"
        )


def coverage_note(ix: Index) -> str | None:
    """One line where captions describe the collection loosely (see ``Index.coverage``)."""
    coverage = ix.coverage()
    if coverage is None or coverage >= config.COVERAGE_LOW:
        return None
    return (
        f"captions describe this collection loosely (coverage {coverage:.2f}, below "
        f"{config.COVERAGE_LOW}): --method concept_hybrid or image may rank better here"
    )


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@db_option
@json_option
def remove(path: Path, db: Db, as_json: bool) -> None:
    """Drop a file or folder from the index (files on disk are not touched)."""
    with Index.open(db) as ix:
        removed = ix.remove(path)
    if as_json:
        emit({"removed": removed})
    else:
        click.echo(f"removed {removed} image{'s' if removed != 1 else ''} from the index")


methods_option = click.option(
    "--methods",
    help="Comma-separated scoring methods to report (default: every one the index can use).",
)


def parse_methods(text: str | None) -> list[str] | None:
    """The methods asked for; None: every one the index can use."""
    return None if text is None else scoring.parse(text)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@db_option
@click.option("--model", help="Model for a new index (see 'index').")
@captions_option
@methods_option
@click.option(
    "--tau",
    type=SCORE,
    help="Threshold for the default method's pair decisions, from -1 to 1 (default: the one "
    "the index records).",
)
@click.option(
    "--text-queries",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also measure text queries: a CSV of path,caption (each caption describes that photo); "
    "reports R@1 and R@10.",
)
@device_option
@click.option("-q", "--quiet", is_flag=True)
@json_option
def evaluate(
    folder: Path,
    db: Db,
    model: str | None,
    captions: Path | None,
    methods: str | None,
    tau: float | None,
    text_queries: Path | None,
    device: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Index FOLDER (labels.csv: path,label; optional pairs.csv: path_a,path_b,same) and report
    retrieval (leave-one-out mAP, P@k) and pair decisions (accuracy, AUC) for every method."""
    from imgsearch.evaluate import evaluate_folder

    report = evaluate_folder(
        folder,
        db=db,
        model=model,
        captions=captions,
        device=device,
        methods=parse_methods(methods),
        tau=tau,
        say=None if quiet else say,
        progress=not quiet,
        text_queries=text_queries,
    )
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(report.table())


@main.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@db_option
@click.option("--model", help="Model when no index is found (default: as for 'index').")
@methods_option
@click.option("--tau", type=SCORE, help="Threshold for the default method's verdict (-1 to 1).")
@device_option
@json_option
def compare(
    a: Path,
    b: Path,
    db: Db,
    model: str | None,
    methods: str | None,
    tau: float | None,
    device: str,
    as_json: bool,
) -> None:
    """Score one pair of images under every method, with verdicts and shared captions.

    Uses the index found from the current folder (or --db); with none, a throwaway one."""
    from imgsearch.api import compare_images

    result = compare_images(
        a, b, db=db, model=model, device=device, methods=parse_methods(methods), tau=tau, say=say
    )
    if as_json:
        emit(result.to_dict())
        return
    width = max([12, *(len(m) + 2 for m in result.scores)])
    click.echo(f"{'method':<{width}}{'score':>8}{'tau':>8}  verdict")
    for method, score in result.scores.items():
        verdict = "similar" if result.similar[method] else "not similar"
        click.echo(f"{method:<{width}}{score:>8.4f}{result.tau[method]:>8.3f}  {verdict}")
    click.echo(f"shared captions: {shared_text(result.shared)}")


GRAPH_FORMATS = ["json", "graphml", "csv"]
GRAPH_SUFFIXES = {".json": "json", ".graphml": "graphml", ".csv": "csv"}

method_option = click.option(
    "--method",
    type=MethodChoice(),
    default=config.DEFAULT_METHOD,
    show_default=True,
    help="Which score relates images.",
)


@main.command()
@click.option(
    "--tau",
    type=SCORE,
    help="Edge threshold, from -1 to 1 (default: the graph's own, or the tau of --method).",
)
@click.option(
    "--method",
    type=MethodChoice(),
    help=f"Which score links images (default: {config.GRAPH_METHOD}).",
)
@click.option(
    "--k",
    "k",
    type=int,
    default=config.GRAPH_K,
    show_default=True,
    help="Link only each image's k nearest neighbours (0: every pair above tau).",
)
@click.option(
    "--mutual/--no-mutual",
    default=config.GRAPH_MUTUAL,
    show_default=True,
    help="With --k: only pairs that are in each other's k nearest.",
)
@click.option(
    "--format",
    "fmt",
    type=Choice(GRAPH_FORMATS),
    help="Print or write (with -o) the whole graph in this format (with -o, default: told "
    "by the file's suffix, else json).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the whole graph to this file instead of printing a summary.",
)
@db_option
@json_option
def graph(
    tau: float | None,
    method: str | None,
    k: int,
    mutual: bool,
    fmt: str | None,
    output: Path | None,
    db: Db,
    as_json: bool,
) -> None:
    """The relationship graph: edges between images whose score is at least tau.

    Prints a summary: its size, the largest groups, its tau and method. --json prints the
    whole graph as JSON; -o FILE [--format json|graphml|csv] writes it to a file."""
    if as_json and fmt not in (None, "json"):
        raise ImgsearchError(f"--json prints JSON, --format {fmt} asks for {fmt}: give one")
    if as_json and output is not None:
        raise ImgsearchError("--json prints the graph, -o FILE writes it (as JSON too): give one")
    if k < 0:
        raise ImgsearchError("--k must be 0 (every pair above tau) or a number of neighbours")
    if output is not None:
        if output.is_dir():
            raise ImgsearchError(f"-o {output} is a folder: give a file to write the graph to")
        fmt = fmt or GRAPH_SUFFIXES.get(output.suffix.lower(), "json")
    with Index.open(db) as ix:
        result = ix.graph(tau=tau, method=method, k=k or None, mutual=mutual)
    if as_json:
        emit(result.to_dict())
    elif output is not None:
        write_graph(result, fmt, output)
        say(f"wrote {output} ({fmt}): {graph_counts(result)}")
    elif fmt is not None:
        write_graph(result, fmt, None)
        say(graph_counts(result))
    else:
        for line in graph_summary(result):
            click.echo(line)
        say("the whole graph: --json, or -o FILE [--format json|graphml|csv]")


def write_graph(result: Graph, fmt: str, output: Path | None) -> None:
    """The whole graph in ``fmt`` to ``output``, or to stdout when it is None."""
    try:
        target = output if output is not None else sys.stdout
        if fmt == "graphml":
            relations.write_graphml(target, result.nodes, result.edges, result.groups)
        elif fmt == "csv":
            relations.write_csv(target, result.nodes, result.edges)
        elif output is not None:
            text = json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"
            output.write_text(text, encoding="utf-8")
        else:
            emit(result.to_dict())
    except OSError as exc:
        if output is None or is_disk_full(exc):
            raise
        raise ImgsearchError(f"cannot write the graph to {output}: {exc.strerror}") from None


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def graph_counts(result: Graph) -> str:
    linked = sum(len(g) for g in result.groups if len(g) > 1)
    return (
        f"{plural(len(result.edges), 'edge')}, {plural(len(result.groups), 'group')}, {linked} "
        f"of {plural(len(result.nodes), 'image')} linked (tau {result.tau:g}, {result.method})"
    )


def graph_summary(result: Graph, most: int = 5, members: int = 3) -> list[str]:
    """A few lines about the graph instead of all of it: its size, how it was made, and its
    largest groups (``most`` of them, ``members`` paths each)."""
    linked = [g for g in result.groups if len(g) > 1]
    alone = len(result.groups) - len(linked)
    if result.k is None:
        rule = "every pair at or above tau"
    elif result.mutual:
        rule = f"mutual nearest neighbours (each among the other's {result.k} nearest)"
    else:
        rule = f"each image to its {result.k} nearest neighbours"
    lines = [
        f"{plural(len(result.nodes), 'image')}, {plural(len(result.edges), 'edge')}, "
        f"{plural(len(result.groups), 'group')}: {len(linked)} of two or more images, "
        f"{alone} of one",
        f"method {result.method}, tau {result.tau:g}: {rule}",
    ]
    if linked:
        lines.append("largest groups:")
    for group in linked[:most]:
        paths = ", ".join(result.nodes[row] for row in group[:members])
        more = f" (+{len(group) - members} more)" if len(group) > members else ""
        lines.append(f"  {len(group)} images: {paths}{more}")
    if len(linked) > most:
        lines.append(f"  ... {plural(len(linked) - most, 'more group')}")
    return lines


@main.command()
@click.option("--k", "k", type=int, help=f"k-means clusters (default {config.CLUSTERS_K}).")
@click.option("--tau", type=SCORE, help="Instead of k-means: components of the tau graph.")
@method_option
@filter_options
@db_option
@html_option
@json_option
def clusters(
    k: int | None,
    tau: float | None,
    method: str,
    after: str | None,
    before: str | None,
    camera: str | None,
    under: Path | None,
    db: Db,
    html_file: Path | None,
    as_json: bool,
) -> None:
    """Group the collection; each group is named by its members' most common captions."""
    filters = {"after": after, "before": before, "camera": camera, "under": under}
    with Index.open(db) as ix:
        found = ix.clusters(k=k, tau=tau, method=method, **filters)
        if html_file is not None:
            report.save(html_file, report.clusters_page(ix, found))
            say(f"wrote {html_file}")
    if as_json:
        emit([{"name": c.name, "captions": c.captions, "members": c.members} for c in found])
        return
    for cluster in found:
        click.echo(f"{cluster.name} ({len(cluster.members)})")
        for member in cluster.members:
            click.echo(f"    {member}")


@main.command()
@click.option(
    "--threshold",
    type=Score(0.0, 1.0, low_open=True),
    help="Image-vector cosine at which two photos become candidates to verify, above 0 and "
    "at most 1 (default: the model's). Copies are decided on the pixels, not by it.",
)
@click.option(
    "--move-to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Move the exact and copy members but the one to keep into this folder (shows the "
    "plan and asks first).",
)
@click.option("--include-similar", is_flag=True, help="With --move-to: move similar shots too.")
@click.option("--yes", "-y", is_flag=True, help="With --move-to: move without asking.")
@filter_options
@db_option
@html_option
@json_option
def duplicates(
    threshold: float | None,
    move_to: Path | None,
    include_similar: bool,
    yes: bool,
    after: str | None,
    before: str | None,
    camera: str | None,
    under: Path | None,
    db: Db,
    html_file: Path | None,
    as_json: bool,
) -> None:
    """Find exact duplicates, edited copies and similar shots, each group with the photo to
    keep and why."""
    if include_similar and move_to is None:
        raise ImgsearchError("--include-similar goes with --move-to")
    if yes and move_to is None:
        raise ImgsearchError("--yes goes with --move-to")
    with Index.open(db) as ix:
        filters = {"after": after, "before": before, "camera": camera, "under": under}
        groups = ix.duplicates(threshold, progress=_verify_bar(), **filters)
        if html_file is not None:  # before any move: it shows the copies where they were found
            report.save(html_file, report.duplicates_page(ix, groups))
            say(f"wrote {html_file}")
        moved: list = []
        if move_to is not None:
            plan = ix.duplicates_plan(groups, move_to, include_similar)
            if plan and _confirmed(plan, move_to, yes):
                try:
                    moved = ix.move_duplicates(groups, move_to, include_similar)
                except MoveStopped as stopped:
                    for move in stopped.moved:
                        say(f"moved {move.source} -> {move.destination}")
                    raise
            elif not plan:
                say("nothing to move")
    if as_json:
        emit([g.to_dict() for g in groups])
    else:
        print_duplicates(groups)
    for move in moved:
        say(f"moved {move.source} -> {move.destination}")
    if move_to is not None and moved:
        say(f"moved {len(moved)} files to {move_to}")


def _verify_bar():  # noqa: ANN202 - a progress callback, or None off a terminal
    """A progress line on stderr while candidate pairs are verified, when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: list = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc="verifying", unit="pair", leave=False))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return progress


def interactive() -> bool:
    """Whether someone at a terminal can answer a question."""
    return sys.stdin.isatty()


def _confirmed(plan: list[tuple[Path, Path]], folder: Path, yes: bool) -> bool:
    """Show what would move; ask on a terminal. No terminal and no --yes: refuse."""
    click.echo(f"would move {len(plan)} files to {folder}:", err=True)
    for source, destination in plan:
        click.echo(f"  {source} -> {destination}", err=True)
    if yes:
        return True
    if not interactive():
        raise ImgsearchError(
            f"not moving {len(plan)} files without a yes: run on a terminal to confirm, "
            "or add --yes"
        )
    if click.confirm(f"Move these {len(plan)} files?", default=False, err=True):
        return True
    say("nothing moved")
    return False


TIER_HEADINGS = {
    "exact": "exact duplicates (the same bytes or pixels)",
    "copy": "edited copies (verified on the pixels: agreement at least {threshold:g})",
    "similar": "similar shots (image cosine at least {threshold:.3f}; never moved unless asked)",
}


def print_duplicates(groups: list) -> None:
    if not groups:
        click.echo("no duplicates found")
        return
    tier = None
    for group in groups:
        if group.tier != tier:
            tier = group.tier
            click.echo(TIER_HEADINGS[tier].format(threshold=group.threshold))
        click.echo(f"  keep    {group.keep}")
        click.echo(f"          because: {group.keep_reason}")
        for other in group.others:
            click.echo(f"  {other.tier:<7} {other.path}  ({evidence_text(other)})")


def evidence_text(other) -> str:  # noqa: ANN001 - a results.Copy
    e = other.evidence
    if other.tier == "exact":
        return f"same {e.get('same', 'bytes')}"
    if other.tier == "copy":
        parts = [f"agreement {other.score:.3f}", f"{e.get('matched_features', 0)} matched features"]
        if e.get("mirrored"):
            parts.append("mirrored")
        if e.get("turn"):
            parts.append(f"turned {e['turn']}°")
        if e.get("hash_distance") is not None:
            parts.append(f"hash distance {e['hash_distance']}")
        return ", ".join(parts)
    parts = [f"cosine {other.score:.3f}"]
    if "seconds_apart" in e:
        parts.append(f"{e['seconds_apart']:g} s apart")
    if "overlap" in e:
        parts.append(f"overlap {e['overlap']:.0%}")
    return ", ".join(parts)


@main.command()
@click.argument("root", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--query",
    "query_item",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The item (a folder inside ROOT) to compare the others with.",
)
@click.option("-k", "k", type=int, default=config.DEFAULT_K, show_default=True)
@click.option(
    "--method",
    type=click.Choice(["hungarian", "greedy", "ordered", "mean"]),
    default=config.SET_METHOD,
    show_default=True,
    help="How the two sets are matched.",
)
@click.option("--min-pair", type=SCORE, help="Only matches scoring at least this count.")
@click.option("--top-m", type=int, help="Average only the best m matches.")
@click.option(
    "--score",
    type=MethodChoice(),
    default=config.DEFAULT_METHOD,
    show_default=True,
    help="Which image score the matching uses.",
)
@db_option
@click.option("--model", help="Model for a new index (see 'index').")
@captions_option
@click.option("-q", "--quiet", is_flag=True)
@json_option
def sets(
    root: Path,
    query_item: Path,
    k: int,
    method: str,
    min_pair: float | None,
    top_m: int | None,
    score: str,
    db: Db,
    model: str | None,
    captions: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Rank the items of ROOT (one folder of images per item) by set similarity to --query."""
    with Index.create(root, db, model, captions, say=None if quiet else say) as ix:
        ix.add(progress=not quiet)
        hits = ix.sets(query_item, k=k, method=method, min_pair=min_pair, top_m=top_m, score=score)
    if as_json:
        emit([{"item": h.item, "score": round(h.score, 6)} for h in hits])
        return
    for hit in hits:
        click.echo(f"{hit.score:.4f}  {hit.item}")


polling_option = click.option(
    "--polling",
    is_flag=True,
    help="Look at the folder every --interval seconds instead of being told of changes "
    "(inotify): for network and FUSE mounts, or where the inotify limits are reached.",
)
interval_option = click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between two looks at the folder with --polling (default: 1).",
)


def skip_note(skip: Skipped) -> None:
    say(f"skipped {skip.path}: {skip.reason}")


def summary_line(summary: IndexSummary) -> str:
    """What an indexing run did, in one line: `index` prints it, `watch` one per batch."""
    kinds = f" ({skip_counts(summary.skipped)})" if summary.skipped else ""
    return (
        f"added {summary.added}, updated {summary.updated}, moved {summary.moved}, "
        f"removed {summary.removed}, unchanged {summary.unchanged}, "
        f"skipped {len(summary.skipped)}{kinds} in {summary.seconds:.1f} s"
    )


def batch_printer(as_json: bool, notes: bool = False) -> Callable[[Batch], None]:
    """Prints a watcher's batches, one line each (a JSON object with --json), on stdout,
    or as notes on stderr (``notes``: `serve --watch`, whose stdout is the address)."""

    def show(batch: Batch) -> None:
        if as_json:
            line = json.dumps(batch.to_dict(), ensure_ascii=False)
        else:
            paths = f"{batch.paths} path{'s' if batch.paths != 1 else ''}"
            what = "catch-up" if batch.catch_up else f"batch {batch.number} ({paths})"
            line = f"{what}: {summary_line(batch.summary)}"
        if notes:
            say(line)
        else:
            click.echo(line)

    return show


def stopped_line(watcher: Watcher) -> str:
    totals = watcher.totals
    cut = "; the batch under way was stopped (what it finished is kept)"
    return (
        f"stopped watching {watcher.root} after {totals.batches} "
        f"batch{'es' if totals.batches != 1 else ''}: added {totals.added}, updated "
        f"{totals.updated}, moved {totals.moved}, removed {totals.removed}"
        f"{cut if totals.interrupted else ''}"
    )


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@db_option
@click.option("--model", help="Model for a new index (as for index; an existing one keeps its).")
@device_option
@polling_option
@interval_option
@click.option("-q", "--quiet", is_flag=True, help="No per-file notes.")
@json_option
def watch(
    folder: Path,
    db: Db,
    model: str | None,
    device: str,
    polling: bool,
    interval: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Keep the index of FOLDER current as files are added, changed, moved or deleted.

    Catches up first, then indexes each batch of changes (gathered until the folder is
    quiet for a second) and prints one line for it. Holds the writer lock while it runs;
    Ctrl-C or SIGTERM stops it."""
    from imgsearch import watch as watching

    if interval is not None and not polling:
        raise ImgsearchError("--interval sets how often --polling looks; add --polling")
    with Index.create(folder, db, model, device=device, say=None if quiet else say) as ix:
        watcher = watching.Watcher(
            ix,
            polling,
            interval or watching.INTERVAL,
            on_batch=batch_printer(as_json),
            on_skip=None if quiet else skip_note,
            say=say,
            on_start=lambda: say(f"watching {ix.root} ({watcher.totals.observer}); Ctrl-C stops"),
        )
        with watching.stop_on_signals(watcher):
            watcher.run()
    say(stopped_line(watcher))


@main.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback shows your photos to the network.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=config.SERVE_PORT,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@click.option("--watch", "watching", is_flag=True, help="Also keep the index current (watch).")
@polling_option
@interval_option
def serve(db: Db, host: str, port: int, watching: bool, polling: bool, interval: float) -> None:
    """Search and browse the index in a web browser: by image or text, with clusters and
    duplicates. Prints the address to open; Ctrl-C stops it. With --watch it also keeps
    the index current as files change, as `imgsearch watch` does."""
    from imgsearch import web

    def ready(url: str, ix: Index) -> None:
        if not web.is_loopback(host):
            say(f"warning: listening on {host}: anyone who can reach it can see the photos")
        say(f"{ix.store.count()} images in {ix.root}; open {url} in a browser (Ctrl-C stops)")
        click.echo(url)

    if interval is not None and not polling:
        raise ImgsearchError("--interval sets how often --polling looks; add --polling")
    if not watching:
        if polling:
            raise ImgsearchError("--polling goes with --watch")
        web.serve(db, host, port, on_ready=ready)
        return
    from imgsearch import watch

    shown = batch_printer(as_json=False, notes=True)
    with (
        watch.sigterm_as_interrupt(),
        watch.in_background(db, polling, interval or watch.INTERVAL, shown, skip_note, say) as w,
    ):
        say(f"watching {w.root} ({w.totals.observer})")
        web.serve(db, host, port, on_ready=ready)
    say(stopped_line(w))


@main.command("map")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("map.html"),
    show_default=True,
    help="map.html (interactive, thumbnails on hover) or map.png.",
)
@click.option(
    "--method",
    "projection",
    type=click.Choice(PROJECTIONS),
    default="auto",
    show_default=True,
    help=f"t-SNE, PCA, or auto: t-SNE up to {config.TSNE_MAX_IMAGES} images, PCA above.",
)
@click.option(
    "--k",
    "k",
    type=int,
    help=f"k-means clusters (default: about the square root of the images, at most "
    f"{config.CLUSTERS_K}).",
)
@click.option(
    "--score",
    type=MethodChoice(),
    default=config.DEFAULT_METHOD,
    show_default=True,
    help="Which vectors are placed and clustered.",
)
@click.option("--size", default="1200x900", show_default=True, help="PNG size, WIDTHxHEIGHT.")
@filter_options
@db_option
def map_command(
    output: Path,
    projection: str,
    k: int | None,
    score: str,
    size: str,
    after: str | None,
    before: str | None,
    camera: str | None,
    under: Path | None,
    db: Db,
) -> None:
    """Draw the collection in two dimensions, coloured by cluster (t-SNE or PCA)."""
    report.map_format(output)
    dimensions = report.parse_dimensions(size)
    with Index.open(db) as ix:
        filters = {"after": after, "before": before, "camera": camera, "under": under}
        layout = ix.layout(projection, k=k, method=score, **filters)
        report.save_map(ix, layout, output, dimensions)
    say(
        f"wrote {output}: {len(layout.paths)} images, {layout.projection}, "
        f"{len(layout.clusters)} clusters"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
