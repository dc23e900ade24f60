"""The command line: parsing and printing only; every action goes through ``imgsearch.api``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from imgsearch import config
from imgsearch.api import Index
from imgsearch.errors import ImgsearchError

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Index database (default: FOLDER/.imgsearch/index.db, or found from the current folder).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    help="Where the model runs (default: CUDA, then MPS, then CPU).",
)


def say(message: str) -> None:
    """Notes for the user go to stderr; stdout carries only results."""
    click.echo(f"imgsearch: {message}", err=True)


def emit(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


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
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback for the user
            if os.environ.get("IMGSEARCH_DEBUG"):
                raise
            say(f"error: {type(exc).__name__}: {exc} (set IMGSEARCH_DEBUG=1 for details)")
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgsearch")
def main() -> None:
    """Find similar images through the captions a vision-language model picks for them."""


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@db_option
@click.option(
    "--model",
    help="CLIP checkpoint id or folder, or 'offline' (default: CLIP if it "
    "can be loaded, else offline; an existing index keeps its own).",
)
@click.option(
    "--captions",
    "captions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Caption bank: a text file, one caption a line (default: the packaged bank).",
)
@click.option(
    "--top-n",
    type=int,
    default=config.TOP_N,
    show_default=True,
    help="Captions kept per image (new index only).",
)
@click.option("--batch-size", type=int, default=config.BATCH_SIZE, show_default=True)
@click.option("--workers", type=int, help="Decoding threads (default: one per core, at most 8).")
@device_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no per-file notes.")
@json_option
def index(
    folder: Path,
    db: Path | None,
    model: str | None,
    captions: Path | None,
    top_n: int,
    batch_size: int,
    workers: int | None,
    device: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Index every image in FOLDER (recursively); a re-run only does what changed."""
    with Index.create(folder, db, model, captions, top_n, device, say=None if quiet else say) as ix:
        summary = ix.add(
            batch_size=batch_size,
            workers=workers,
            progress=not quiet,
            on_skip=None if quiet else lambda s: say(f"skipped {s.path}: {s.reason}"),
        )
    if as_json:
        emit(summary.to_dict())
        return
    click.echo(
        f"added {summary.added}, updated {summary.updated}, moved {summary.moved}, "
        f"removed {summary.removed}, unchanged {summary.unchanged}, "
        f"skipped {len(summary.skipped)} in {summary.seconds:.1f} s"
    )


@main.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--text", help="Query by text instead of (or without) an image.")
@click.option("-k", "k", type=int, default=config.DEFAULT_K, show_default=True, help="Results.")
@click.option("--under", type=click.Path(path_type=Path), help="Only results in this subfolder.")
@click.option("--explain", is_flag=True, help="Show the captions each hit shares with the query.")
@db_option
@device_option
@json_option
def query(
    images: tuple[Path, ...],
    text: str | None,
    k: int,
    under: Path | None,
    explain: bool,
    db: Path | None,
    device: str,
    as_json: bool,
) -> None:
    """Rank the indexed images by similarity to IMAGES (averaged) or to --text."""
    if bool(images) == bool(text):
        raise ImgsearchError("give one or more query images, or --text (not both)")
    with Index.open(db, device=device) as ix:
        if text:
            hits = ix.query_text(text, k=k, under=under, explain=explain)
        else:
            hits = ix.query(list(images), k=k, under=under, explain=explain)
    if as_json:
        emit(
            [
                {
                    "path": h.path,
                    "score": round(h.score, 6),
                    **({"shared": h.shared} if explain else {}),
                }
                for h in hits
            ]
        )
        return
    for hit in hits:
        click.echo(f"{hit.score:.4f}  {hit.path}")
        if explain:
            click.echo(f"        shares: {'; '.join(hit.shared) if hit.shared else '(no caption)'}")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@db_option
@device_option
@json_option
def captions(image: Path, db: Path | None, device: str, as_json: bool) -> None:
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
def status(db: Path | None, as_json: bool) -> None:
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


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@db_option
@json_option
def remove(path: Path, db: Path | None, as_json: bool) -> None:
    """Drop a file or folder from the index (files on disk are not touched)."""
    with Index.open(db) as ix:
        removed = ix.remove(path)
    if as_json:
        emit({"removed": removed})
    else:
        click.echo(f"removed {removed} image{'s' if removed != 1 else ''} from the index")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@db_option
@click.option("--model", help="Model for a new index (see 'index').")
@device_option
@click.option("-q", "--quiet", is_flag=True)
@json_option
def evaluate(
    folder: Path, db: Path | None, model: str | None, device: str, quiet: bool, as_json: bool
) -> None:
    """Index FOLDER (with labels.csv: path,label) and report leave-one-out retrieval quality."""
    from imgsearch.api import evaluate_folder

    report = evaluate_folder(
        folder, db=db, model=model, device=device, say=None if quiet else say, progress=not quiet
    )
    if as_json:
        emit(report.to_dict())
        return
    click.echo(f"{report.images} images, {report.labels} labels (default method: {report.default})")
    keys = list(next(iter(report.methods.values())))
    click.echo(f"{'method':<12}" + "".join(f"{key:>9}" for key in keys))
    for method, values in report.methods.items():
        click.echo(f"{method:<12}" + "".join(f"{values[key]:>9.4f}" for key in keys))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
