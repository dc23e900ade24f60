"""Make docs/ui.png, the README's picture of `imgsearch serve`, and docs/map.png.

Copies a few photos from each sub-folder of a folder of real photos, indexes them, starts the
real server, searches with a photo from the same source that was not copied (a new photo, as
a user would drop one) in headless Chromium, and saves the page, shrunk to a small PNG. Uses
the same helpers as the web UI tests (tests/browser.py). The map is what `imgsearch map -o
map.png` draws for the same index. For example:

    python scripts/screenshot.py ../shared/data/clothing-small --query-from shoes
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgsearch import Index, report  # noqa: E402
from imgsearch.files import is_image_name  # noqa: E402
from tests.browser import chromium, missing, results, serving, wait  # noqa: E402

# True once every thumbnail in the window has loaded (those below load lazily, later).
SHOWN = """return [...document.querySelectorAll('#results img')]
    .filter(i => i.getBoundingClientRect().top < window.innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)"""


def pick(source: Path, folder: Path, per_folder: int, query_from: str | None) -> Path:
    """Copy ``per_folder`` photos of each sub-folder (sorted by name) into ``folder``; return
    the next photo of ``query_from`` (default: the first sub-folder), which is not copied."""
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SystemExit(f"{source} has no sub-folders of photos")
    query = None
    for sub in folders:
        photos = sorted(p for p in sub.iterdir() if is_image_name(p.name))
        (folder / sub.name).mkdir(parents=True, exist_ok=True)
        for photo in photos[:per_folder]:
            target = folder / sub.name / photo.name
            if not target.exists():
                shutil.copy2(photo, target)  # keeps mtime: a re-run indexes nothing again
        if sub.name == (query_from or folders[0].name) and len(photos) > per_folder:
            query = photos[per_folder]
    if query is None:
        raise SystemExit(f"no photo left in {source / str(query_from)} to search with")
    return query


def shrink(png: bytes, limit_kb: int) -> Image.Image:
    """Fewer colours until the picture fits in ``limit_kb`` (photos make large PNGs)."""
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    for colours in (256, 192, 128, 96, 64):
        small = shot.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        small.save(out, "PNG", optimize=True)
        if out.tell() <= limit_kb * 1024:
            break
    return small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="a folder with one sub-folder per kind")
    parser.add_argument("--per-folder", type=int, default=12, help="photos copied per sub-folder")
    parser.add_argument("--query-from", help="the sub-folder the query photo comes from")
    parser.add_argument("--work", type=Path, default=ROOT / "demo" / "screenshot")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--size", default="1280x900", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--limit-kb", type=int, default=300)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "ui.png")
    parser.add_argument("--map", type=Path, default=ROOT / "docs" / "map.png")
    args = parser.parse_args()
    reason = missing()
    if reason:
        raise SystemExit(reason)
    folder = args.work / "photos"
    query = pick(args.photos, folder, args.per_folder, args.query_from)
    with Index.create(folder, model=args.model) as index:
        summary = index.add()
        print(f"indexed {folder}: added {summary.added}, unchanged {summary.unchanged}")
        layout = index.layout()
        report.save_map(index, layout, args.map, (1000, 700))
    print(f"wrote {args.map}: {len(layout.paths)} images, {layout.projection}")
    width, height = (int(n) for n in args.size.split("x"))
    with (
        serving(folder, args.work / "logs") as (url, _),
        tempfile.TemporaryDirectory(prefix="imgsearch-chromium-") as profile,
    ):
        driver = chromium(Path(profile), (width, height))
        try:
            driver.get(url)
            driver.find_element("id", "file").send_keys(str(query.resolve()))
            shown = results(driver, "the search")
            wait(driver, lambda d: d.execute_script(SHOWN), "every thumbnail in view")
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    picture = shrink(png, args.limit_kb)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output, "PNG", optimize=True)
    names = ", ".join(c["name"] for c in shown[:5])
    print(f"searched with {query}; first hits: {names}")
    print(
        f"wrote {args.output}: {picture.width}x{picture.height}, "
        f"{args.output.stat().st_size / 1024:.0f} KB"
    )


if __name__ == "__main__":
    main()
