"""What people look at: self-contained HTML reports, and the collection's map.

Reports embed every thumbnail as a base64 JPEG, so one file can be opened anywhere or sent
to someone; they reuse the web UI's stylesheet (``imgsearch/static/style.css``), so a
report looks like the UI. The map places the collection in two dimensions (t-SNE or PCA)
and colours each image by its k-means cluster.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from imgsearch.errors import ImgsearchError
from imgsearch.files import BadImage
from imgsearch.thumbnails import make_thumbnail

if TYPE_CHECKING:
    from imgsearch.api import Index
    from imgsearch.results import Cluster, Duplicates, Hit, Layout

REPORT_THUMBNAIL = 200  # longest side of a thumbnail embedded in a report
MAP_THUMBNAIL = 128  # the map's hover previews: one per image, so smaller
MAP_THUMBNAILS_MAX = 5000  # above, a page of previews would weigh hundreds of MB: names only
MAP_SIZE = (1200, 900)
# Distinct colours for clusters (cycled past 20), readable on white.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1",
]  # fmt: skip


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --- HTML pages ----------------------------------------------------------------------


def stylesheet() -> str:
    return resources.files("imgsearch").joinpath("static/style.css").read_text(encoding="utf-8")


def page(title: str, subtitle: str, body: str, script: str = "") -> str:
    """A whole self-contained HTML document with the UI's stylesheet inline."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{html.escape(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>\n{stylesheet()}</style>\n</head>\n<body>\n"
        f'<header><h1>imgsearch</h1><p class="sub">{html.escape(subtitle)}</p></header>\n'
        f"<main>\n{body}</main>\n{script}</body>\n</html>\n"
    )


def _subtitle(index: Index, what: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M")
    return f"{what} · {index.root} · model {index.model_name} · {when}"


def card(
    index: Index,
    path: str,
    image: int | str | None = None,
    score: float | None = None,
    shared: list[str] | None = None,
    badge: str = "",
) -> str:
    """One image as a report shows it: thumbnail (linking to the file), name, score and the
    captions it shares with the query. ``image`` is its id or path in the index."""
    thumb = index.thumbnail(image if image is not None else path, REPORT_THUMBNAIL)
    return _card_html(path, display_name(index, path), thumb, score, shared, badge)


def _card_html(
    path: str,
    name: str,
    thumb: bytes | None,
    score: float | None = None,
    shared: list[str] | None = None,
    badge: str = "",
) -> str:
    picture = (
        f'<img src="{data_uri(thumb)}" alt="{html.escape(name)}">'
        if thumb is not None
        else '<span class="missing">no preview</span>'
    )
    line = f'<span class="score">{score:.4f}</span>' if score is not None else ""
    if badge:
        line += f'<span class="badge">{html.escape(badge)}</span>'
    line += f'<span class="name" title="{html.escape(path)}">{html.escape(name)}</span>'
    explained = ""
    if shared is not None:
        text = "; ".join(shared[:5]) + (f" (+{len(shared) - 5} more)" if len(shared) > 5 else "")
        explained = (
            f'<div class="shared" title="{html.escape("; ".join(shared))}">'
            f"shares: {html.escape(text or '(no caption)')}</div>"
        )
    uri = html.escape(Path(path).as_uri())
    return (
        f'<figure class="hit" data-path="{html.escape(path)}">'
        f'<a class="thumb" href="{uri}">{picture}</a>'
        f'<figcaption><div class="line">{line}</div>{explained}</figcaption></figure>\n'
    )


def display_name(index: Index, path: str) -> str:
    """A path as the UI and reports show it: relative to the indexed folder."""
    try:
        return Path(path).relative_to(index.root).as_posix()
    except ValueError:
        return Path(path).name


def query_page(
    index: Index, hits: Sequence[Hit], images: Sequence[Path] = (), text: str | None = None
) -> str:
    """The results of one query: the query (images or text), then every hit as a card."""
    if text is not None:
        asked = f'<p class="query-text">“{html.escape(text)}”</p>'
        what = f"query: {text}"
    else:
        shown = []
        for image in images:
            found = index.image_file(image)
            try:
                thumb = index.thumbnail(found.id, REPORT_THUMBNAIL) if found else None
                thumb = thumb or make_thumbnail(Path(image), REPORT_THUMBNAIL)
            except BadImage:
                thumb = None
            shown.append(_card_html(str(Path(image).resolve()), Path(image).name, thumb))
        asked = f'<div class="grid">{"".join(shown)}</div>'
        what = "query: " + ", ".join(Path(i).name for i in images)
    cards = "".join(card(index, h.path, h.id, h.score, h.shared) for h in hits)
    body = (
        f'<section class="asked"><h2>Query</h2>{asked}</section>\n'
        f'<section class="results"><h2>{len(hits)} results</h2>'
        f'<div class="grid">{cards}</div></section>\n'
    )
    return page(f"imgsearch {what}", _subtitle(index, what), body)


def clusters_page(index: Index, clusters: Sequence[Cluster]) -> str:
    """Every cluster under its name and most shared captions, with all its members."""
    sections = []
    for number, cluster in enumerate(clusters):
        colour = PALETTE[number % len(PALETTE)]
        cards = "".join(card(index, m) for m in cluster.members)
        sections.append(
            f'<section class="cluster"><h2><span class="dot" style="background:{colour}">'
            f'</span>{html.escape(cluster.name)} <span class="count">'
            f"({len(cluster.members)})</span></h2>"
            f'<p class="captions">{html.escape("; ".join(cluster.captions))}</p>'
            f'<div class="grid">{cards}</div></section>\n'
        )
    images = sum(len(c.members) for c in clusters)
    what = f"{len(clusters)} clusters of {images} images"
    return page(f"imgsearch {what}", _subtitle(index, what), "".join(sections))


TIER_TITLES = {
    "exact": "Exact duplicates",
    "copy": "Edited copies",
    "similar": "Similar shots (never moved unless asked)",
}


def duplicates_page(index: Index, groups: Sequence[Duplicates]) -> str:
    """The tiers side by side, one column each: every group's photo to keep first, with why,
    then the other members with their tier's score."""
    columns = []
    for tier, title in TIER_TITLES.items():
        mine = [g for g in groups if g.tier == tier]
        sections = []
        for number, group in enumerate(mine, 1):
            cards = card(index, group.keep, badge="keep") + "".join(
                card(index, other.path, score=other.score, badge=other.tier)
                for other in group.others
            )
            sections.append(
                f'<section class="dupes"><h3>Group {number} <span class="count">'
                f"({1 + len(group.others)} images, score ≥ {group.score:.3f})</span></h3>"
                f'<p class="reason">keep: {html.escape(group.keep_reason)}</p>'
                f'<div class="grid">{cards}</div></section>\n'
            )
        if not mine:
            sections.append('<p class="empty">None.</p>')
        columns.append(
            f'<div class="tier {tier}"><h2>{html.escape(title)} '
            f'<span class="count">({len(mine)})</span></h2>{"".join(sections)}</div>'
        )
    body = f'<div class="tiers">{"".join(columns)}</div>\n'
    if not groups:
        body = '<p class="empty">No duplicates found.</p>\n'
    counts = ", ".join(f"{sum(g.tier == t for g in groups)} {t}" for t in TIER_TITLES)
    what = f"{len(groups)} duplicate groups ({counts})"
    return page(f"imgsearch {what}", _subtitle(index, what), body)


# --- the map -------------------------------------------------------------------------

MAP_SCRIPT = """<script>
(() => {
  const points = JSON.parse(document.getElementById("points").textContent);
  const tip = document.getElementById("tip");
  const svg = document.querySelector("svg.map");
  svg.addEventListener("mouseover", (event) => {
    const i = event.target.dataset && event.target.dataset.i;
    if (i === undefined) return;
    const p = points[Number(i)];
    tip.querySelector("img").hidden = !p.thumb;
    tip.querySelector("img").src = p.thumb || "";
    tip.querySelector(".name").textContent = p.name;
    tip.querySelector(".cluster").textContent = p.cluster;
    tip.hidden = false;
  });
  svg.addEventListener("mousemove", (event) => {
    const right = event.clientX + 16 + tip.offsetWidth > window.innerWidth;
    const below = event.clientY + 16 + tip.offsetHeight > window.innerHeight;
    tip.style.left = (right ? event.clientX - 16 - tip.offsetWidth : event.clientX + 16) + "px";
    tip.style.top = (below ? event.clientY - 16 - tip.offsetHeight : event.clientY + 16) + "px";
  });
  svg.addEventListener("mouseout", (event) => {
    if (event.target.dataset && event.target.dataset.i !== undefined) tip.hidden = true;
  });
  svg.addEventListener("click", (event) => {
    const i = event.target.dataset && event.target.dataset.i;
    if (i !== undefined) window.open(points[Number(i)].uri, "_blank");
  });
})();
</script>
"""


def script_json(value: object) -> str:
    """JSON to embed in a <script> element: '<', '>' and '&' as \\u escapes, so that no file
    name can end the element early ('</script>') or turn the rest of the page into script
    text ('<!--<script>'); JSON.parse reads the escapes back as the characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def map_page(index: Index, layout: Layout) -> str:
    """The map as an SVG: one point per image, coloured by cluster, its thumbnail on hover."""
    width, height, margin = 1000, 750, 12
    radius = _radius(len(layout.paths), 1000)
    circles, points = [], []
    for row, (path, (x, y), label) in enumerate(zip(layout.paths, layout.xy, layout.cluster)):
        cx = margin + x * (width - 2 * margin)
        cy = margin + y * (height - 2 * margin)
        colour = PALETTE[int(label) % len(PALETTE)]
        name = display_name(index, path)
        circles.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" fill="{colour}" '
            f'data-i="{row}" data-id="{int(layout.ids[row])}"><title>{html.escape(name)}'
            "</title></circle>"
        )
        thumb = None
        if len(layout.paths) <= MAP_THUMBNAILS_MAX:
            thumb = index.thumbnail(int(layout.ids[row]), MAP_THUMBNAIL)
        points.append(
            {
                "name": name,
                "cluster": layout.clusters[int(label)].name,
                "uri": Path(path).as_uri(),
                "thumb": data_uri(thumb) if thumb is not None else None,
            }
        )
    legend = "".join(
        f'<li><span class="dot" style="background:{PALETTE[n % len(PALETTE)]}"></span>'
        f'{html.escape(c.name)} <span class="count">({len(c.members)})</span></li>'
        for n, c in enumerate(layout.clusters)
    )
    data = script_json(points)
    body = (
        '<div class="map-wrap">'
        f'<svg class="map" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="map of {len(points)} images">{"".join(circles)}</svg>'
        f'<ul class="legend">{legend}</ul></div>\n'
        '<div id="tip" class="tip" hidden><img alt=""><div class="name"></div>'
        '<div class="cluster"></div></div>\n'
        f'<script type="application/json" id="points">{data}</script>\n'
    )
    what = f"map of {len(points)} images ({layout.projection}, {len(layout.clusters)} clusters)"
    if len(points) > MAP_THUMBNAILS_MAX:
        what += f"; no previews above {MAP_THUMBNAILS_MAX} images"
    return page(f"imgsearch {what}", _subtitle(index, what), body, MAP_SCRIPT)


def map_png(layout: Layout, size: tuple[int, int] = MAP_SIZE) -> Image.Image:
    """The map as a picture: coloured points, and a legend of cluster names on the right."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(max(11, min(16, height // 60)))
    line = font.getbbox("Ag")[3] + 6
    legend_width = min(340, width // 3)
    margin = 16
    title = f"{len(layout.paths)} images, {layout.projection}, {len(layout.clusters)} clusters"
    draw.text((margin, margin // 2), title, fill="#444444", font=font)
    left, top = margin, margin + line
    right, bottom = width - legend_width - margin, height - margin
    radius = _radius(len(layout.paths), min(right - left, bottom - top))
    for (x, y), label in zip(layout.xy, layout.cluster):
        cx = left + x * (right - left)
        cy = top + y * (bottom - top)
        colour = PALETTE[int(label) % len(PALETTE)]
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour,
                     outline="#333333")  # fmt: skip
    rows = max(1, (height - top - margin) // line)
    x0 = width - legend_width
    shown = layout.clusters if len(layout.clusters) <= rows else layout.clusters[: rows - 1]
    for n, cluster in enumerate(shown):
        y = top + n * line
        draw.ellipse((x0, y + 3, x0 + line - 9, y + line - 6), fill=PALETTE[n % len(PALETTE)])
        text = _fit(draw, f"{cluster.name} ({len(cluster.members)})", font, legend_width - line)
        draw.text((x0 + line, y), text, fill="#222222", font=font)
    if len(shown) < len(layout.clusters):
        more = f"+{len(layout.clusters) - len(shown)} more clusters"
        draw.text((x0 + line, top + len(shown) * line), more, fill="#666666", font=font)
    return image


def _radius(count: int, extent: int) -> int:
    """Points small enough not to cover each other much, large enough to see and hover."""
    return int(max(3, min(8, extent / (4 * math.sqrt(max(count, 1))))))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


# --- writing -------------------------------------------------------------------------


def save(path: Path, content: str | Image.Image) -> None:
    """Write a page or a picture, with a clear error where it cannot be written."""
    try:
        if isinstance(content, Image.Image):
            content.save(path, "PNG", optimize=True)
        else:
            path.write_text(content, encoding="utf-8")
    except OSError as exc:
        raise ImgsearchError(f"cannot write {path}: {exc.strerror or exc}") from None


def map_format(path: Path) -> str:
    """'html' or 'png', from the file's suffix: checked before any work is done."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".png":
        return "png"
    raise ImgsearchError(f"{path}: the map is written as .html or .png")


def parse_dimensions(text: str) -> tuple[int, int]:
    """'1200x900' -> (1200, 900)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ImgsearchError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 1200x900") from None
    if width < 200 or height < 150 or width * height > 10**8:
        raise ImgsearchError(f"--size {text}: from 200x150 up to 100 megapixels")
    return width, height


def save_map(index: Index, layout: Layout, path: Path, size: tuple[int, int] = MAP_SIZE) -> None:
    """``map.html`` (interactive, thumbnails on hover) or ``map.png``, by the file's suffix."""
    if map_format(path) == "html":
        save(path, map_page(index, layout))
    else:
        save(path, map_png(layout, size))
