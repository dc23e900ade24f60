"""`imgsearch serve` in a real browser: headless Chromium (the system's) driven by Selenium,
against the real server started as a subprocess on a free loopback port."""

from __future__ import annotations

import io
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.remote.webdriver import WebDriver

from imgsearch import Index
from tests.browser import (
    chromium,
    missing,
    read,
    request,
    results,
    serving,
    wait,
)
from tests.conftest import sample
from tests.test_cli import run
from tests.test_report import make_library, photo_names

WAIT = 60  # seconds; the first upload may wait for the model to load


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, small_bank: Path) -> Path:
    return make_library(tmp_path_factory.mktemp("web") / "library", small_bank)


@pytest.fixture(scope="module")
def server(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real `imgsearch serve`, started in the indexed folder (it finds the index there,
    as every command does); yields its URL."""
    logs = tmp_path_factory.mktemp("server")
    with serving(library, logs, timeout=WAIT) as (url, process):
        assert read(logs / "out").strip() == url  # the address to open, on stdout
        yield url
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=30) == 0
    errors = read(logs / "err")
    assert "Traceback" not in errors and "internal error" not in errors, errors


def get(url: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    return request(url, path, method, body, timeout=WAIT)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    reason = missing()
    if reason:
        pytest.fail(reason)
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def script_errors(driver: WebDriver) -> list[str]:
    """Errors the page's JavaScript raised (refused requests are the server's answers)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def open_page(driver: WebDriver, url: str, fragment: str = "") -> None:
    driver.get("about:blank")  # a fresh page each time: no state from the last test
    driver.get(url + fragment)
    wait(driver, lambda d: "image" in d.find_element("id", "status").text, "the status")


def test_upload_finds_the_photo_and_its_copy(
    browser: WebDriver, server: str, library: Path, tmp_path: Path
) -> None:
    before = sorted(p.relative_to(library) for p in library.rglob("*"))
    upload = tmp_path / "my cat.png"  # the same photo, re-encoded, from outside the index
    sample("chelsea").save(upload)
    open_page(browser, server)
    browser.find_element("id", "file").send_keys(str(upload))
    shown = results(browser, "the upload's results")
    assert len(shown) == 9  # an upload is not in the index: every photo is ranked
    assert {c["name"] for c in shown[:2]} == {"chelsea.jpg", "chelsea-small.jpg"}
    assert shown[0]["score"] > 0.99
    assert [c["score"] for c in shown] == sorted((c["score"] for c in shown), reverse=True)
    assert "a photo of a cat" in shown[0]["shared"]
    assert "a photo of a cat" in browser.find_element("id", "query").text  # its own captions
    assert sorted(p.relative_to(library) for p in library.rglob("*")) == before  # nothing written
    assert not script_errors(browser)


def test_more_like_this_searches_by_the_indexed_photo(browser: WebDriver, server: str) -> None:
    open_page(browser, server, "#text=a photo of a cat")
    first = results(browser, "the text search")[0]
    assert first["name"] in ("chelsea.jpg", "chelsea-small.jpg")
    browser.find_elements("css selector", "#results figure.hit button.more")[0].click()
    wait(browser, lambda d: d.current_url.endswith(f"#similar={first['id']}"), "the address")
    wait(browser, lambda d: f"Like {first['name']}" in d.find_element("id", "query").text, "query")
    shown = results(browser, "more like this")
    assert first["id"] not in [c["id"] for c in shown]  # the photo itself is not a result
    assert shown[0]["name"] in {"chelsea.jpg", "chelsea-small.jpg"} - {first["name"]}
    assert len(shown) == 8
    assert not script_errors(browser)


def test_text_search_from_the_box(browser: WebDriver, server: str) -> None:
    open_page(browser, server)
    box = browser.find_element("id", "text")
    box.send_keys("a cup of coffee")
    box.submit()
    shown = results(browser, "the text search")
    assert shown[0]["name"] == "coffee.jpg"
    assert browser.current_url.endswith("#text=a%20cup%20of%20coffee")
    assert "a cup of coffee" in browser.find_element("id", "query").text
    assert not script_errors(browser)


def test_filters_and_terms_through_the_routes(server: str) -> None:
    status, raw = get(server, "/api/search/text?q=a%20cat&k=3")
    assert status == 200
    hits = json.loads(raw)["hits"]
    assert all(h["taken"] and h["taken_from"] == "mtime" for h in hits)  # no EXIF: file time
    status, raw = get(server, "/api/search/text?q=a%20cat&not=a%20cat&not=a%20cat&k=9")
    names = [h["name"] for h in json.loads(raw)["hits"]]
    assert status == 200 and names.index("chelsea.jpg") >= 7  # ranked down: cat minus 2 cats
    status, raw = get(server, "/api/search/text?q=a%20cat&after=2999")
    assert status == 400 and "no indexed photo fits" in json.loads(raw)["error"]
    status, raw = get(server, "/api/search/text?q=a%20cat&before=soon")
    assert status == 400 and "bad date for --before" in json.loads(raw)["error"]
    photo = io.BytesIO()
    sample("chelsea").save(photo, "JPEG", quality=85)
    status, raw = get(server, "/api/search/image?k=3&q=a%20rocket", "POST", photo.getvalue())
    answer = json.loads(raw)
    assert status == 200 and answer["query"]["text"] == "a rocket"
    status, raw = get(server, "/api/search/text?q=a%20cat&sort=date&min_score=-1&k=9")
    taken = [h["taken"] for h in json.loads(raw)["hits"]]
    assert status == 200 and taken == sorted(taken, reverse=True)


def test_the_filters_row_goes_with_every_search(browser: WebDriver, server: str) -> None:
    open_page(browser, server)
    browser.execute_script("document.getElementById('after').value = '2999-01-01'")
    box = browser.find_element("id", "text")
    box.send_keys("a cup of coffee")
    box.submit()
    wait(browser, lambda d: d.find_element("id", "error").text, "the filter's answer")
    assert "no indexed photo fits" in browser.find_element("id", "error").text
    browser.execute_script("document.getElementById('after').value = ''")
    browser.find_element("id", "newest").click()
    browser.execute_script("window.location.hash = '#text=a%20cat%20'")
    shown = results(browser, "the dated search")
    assert shown
    dates = browser.execute_script(
        "return [...document.querySelectorAll('#results .taken')].map(e => e.textContent)"
    )
    assert dates and all(len(d) >= 10 and d[:4].isdigit() for d in dates)
    assert not script_errors(browser)


def test_a_dropped_photo_is_searched(browser: WebDriver, server: str, library: Path) -> None:
    with Index.open(library / ".imgsearch" / "index.db") as index:
        coffee = index.image_file(library / "coffee.jpg").id
    open_page(browser, server)
    browser.execute_async_script(
        """const [id, done] = arguments;
        fetch(`/image/${id}`).then(r => r.blob()).then(blob => {
            const data = new DataTransfer();
            data.items.add(new File([blob], "coffee.jpg", {type: "image/jpeg"}));
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
            done();
        });""",
        coffee,
    )
    shown = results(browser, "the dropped photo's results")
    assert shown[0]["name"] == "coffee.jpg" and shown[0]["score"] > 0.99
    assert not script_errors(browser)


def test_clusters_and_duplicates_tabs(browser: WebDriver, server: str, library: Path) -> None:
    open_page(browser, server)
    browser.find_element("link text", "Clusters").click()
    wait(browser, lambda d: d.find_elements("css selector", "#clusters section"), "clusters")
    shown = browser.execute_script(
        """return [...document.querySelectorAll('#clusters figure.hit')]
            .map(f => f.dataset.path)"""
    )
    assert sorted(Path(p).name for p in shown) == sorted(photo_names(library))  # each once
    titles = [h.text for h in browser.find_elements("css selector", "#clusters section h2")]
    assert len(titles) == 3  # about sqrt(9) clusters, each named by its captions
    sizes = [int(t.rsplit("(", 1)[1].rstrip(")")) for t in titles]
    assert sum(sizes) == 9 and all(t.rsplit(" (", 1)[0] for t in titles)
    browser.find_element("link text", "Duplicates").click()
    wait(browser, lambda d: d.find_elements("css selector", "#duplicates section"), "duplicates")
    group = browser.find_elements("css selector", "#duplicates section.dupes")
    assert len(group) == 1
    text = [f.text for f in group[0].find_elements("css selector", "figure.hit")]
    assert "keep" in text[0] and "chelsea.jpg" in text[0]
    assert "copy" in text[1] and "chelsea-small.jpg" in text[1]
    reason = group[0].find_element("css selector", "p.reason").text
    assert reason.startswith("keep: most pixels")
    columns = browser.find_elements("css selector", "#duplicates .tiers > .tier")
    assert [c.get_attribute("class") for c in columns] == [
        "tier exact",
        "tier copy",
        "tier similar",
    ]
    assert not script_errors(browser)


def test_a_file_that_is_not_an_image_is_a_clear_error(
    browser: WebDriver, server: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list, not a photo")
    open_page(browser, server)
    browser.find_element("id", "file").send_keys(str(notes))
    error = browser.find_element("id", "error")
    wait(browser, lambda d: error.is_displayed(), "the error message")
    assert error.text == "the upload cannot be used: not an image"
    assert not browser.find_elements("css selector", "#results figure.hit")
    assert not script_errors(browser)


def test_the_map_shows_a_thumbnail_on_hover(
    browser: WebDriver, library: Path, tmp_path: Path
) -> None:
    out = tmp_path / "map.html"
    assert run("map", "-o", str(out), "--method", "pca", cwd=library).exit_code == 0
    browser.get(out.as_uri())  # a file on its own: everything it shows is inside it
    circles = browser.find_elements("css selector", "svg.map circle")
    assert len(circles) == 9
    point = circles[4]
    ActionChains(browser).move_to_element(point).perform()
    tip = browser.find_element("id", "tip")
    preview = "return document.querySelector('#tip img').naturalWidth"
    wait(browser, lambda d: tip.is_displayed() and d.execute_script(preview) > 0, "the preview")
    name = point.find_element("tag name", "title").get_attribute("textContent")
    assert tip.text.splitlines()[0] == name
    assert not script_errors(browser)


def test_only_indexed_files_are_served(server: str, library: Path) -> None:
    with Index.open(library / ".imgsearch" / "index.db") as index:
        cat = index.image_file(library / "chelsea.jpg").id
    status, body = get(server, f"/image/{cat}")
    assert status == 200 and body == (library / "chelsea.jpg").read_bytes()
    status, body = get(server, f"/thumb/{cat}")
    with Image.open(io.BytesIO(body)) as thumb:
        assert status == 200 and thumb.format == "JPEG" and max(thumb.size) == 256
    for path in (
        "/image/../../etc/passwd",
        "/image/%2e%2e/%2e%2e/etc/passwd",
        "/image/..%2f..%2fetc%2fpasswd",
        "/thumb/../../../etc/passwd",
        "/image/chelsea.jpg",
        f"/image/{cat}/../../../etc/passwd",
        "/image/999999",
        "/thumb/999999",
        "/image/-1",
        "/static/../web.py",
        "/static/..%2fweb.py",
        "/static/index.html/../../web.py",
        "/static/web.py",
        "/etc/passwd",
        "/.imgsearch/index.db",
        "/api/similar/999999",
    ):
        status, body = get(server, path)
        assert status == 404, path
        assert b"root:" not in body and b"SQLite" not in body


def test_only_loopback_host_names_are_answered(server: str) -> None:
    """A page on another domain that points its name at 127.0.0.1 (DNS rebinding) gets
    nothing: the server answers only requests addressed to a loopback name."""
    port = server.rsplit(":", 1)[1].rstrip("/")
    for host in ("localhost", "127.0.0.1"):
        assert request(server, "/api/status", headers={"Host": f"{host}:{port}"})[0] == 200
    for path in ("/api/status", "/thumb/1", "/"):
        status, body = request(server, path, headers={"Host": f"evil.example:{port}"})
        assert status == 400 and b"image" not in body


def test_uploads_are_size_limited(server: str) -> None:
    status, body = get(server, "/api/search/image", "POST", b"\xff" * (20 * 2**20 + 1))
    assert status == 413
    assert json.loads(body) == {"error": "the image is larger than the upload limit of 20 MB"}
    status, body = get(server, "/api/search/image", "POST", b"")
    assert status == 400 and "empty" in json.loads(body)["error"]


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body as browsers and curl -F send it: (name, filename or None
    for a plain field, content) per part; and its Content-Type header."""
    boundary = "----imgsearch-test-7d1f2a"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"\r\nContent-Type: image/jpeg'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_form(url: str, parts: list[tuple[str, str | None, bytes]]) -> tuple[int, dict]:
    body, headers = multipart(parts)
    status, answer = request(url, "/api/search/image?k=4", "POST", body, WAIT, headers)
    return status, json.loads(answer)


def test_a_multipart_upload_is_searched_as_a_raw_one(server: str) -> None:
    photo = io.BytesIO()
    sample("chelsea").save(photo, "JPEG", quality=85)  # a real JPEG, not in the index
    status, raw = get(server, "/api/search/image?k=4", "POST", photo.getvalue())
    assert status == 200
    hits = json.loads(raw)["hits"]
    assert {h["name"] for h in hits[:2]} == {"chelsea.jpg", "chelsea-small.jpg"}
    assert len(hits) == 4 and hits[0]["score"] > 0.9
    status, answer = post_form(
        server, [("k", None, b"2"), ("file", "my cat.jpg", photo.getvalue())]
    )
    assert status == 200 and answer == json.loads(raw)  # the same photo, the same answer
    # No field named "file": the first file field is the photo.
    parts = [("note", None, b"hello"), ("photo", "a.jpg", photo.getvalue())]
    parts.append(("other", "b.jpg", b"not this one"))
    assert post_form(server, parts) == (200, json.loads(raw))


def test_multipart_mistakes_are_one_clear_error_each(server: str) -> None:
    status, answer = post_form(server, [("note", None, b"no photo here")])
    assert status == 400
    assert answer == {"error": "the form has no file: send the photo in a file field 'file'"}
    status, answer = post_form(server, [("file", "empty.jpg", b"")])
    assert status == 400 and answer["error"] == "the upload is empty: choose an image file"
    status, answer = post_form(server, [("file", "notes.txt", b"plain text")])
    assert (status, answer) == (400, {"error": "the upload cannot be used: not an image"})
    status, answer = post_form(server, [("file", "big.jpg", b"\xff" * (20 * 2**20 + 1))])
    assert status == 413  # the same limit as a raw body, on the photo itself
    assert answer == {"error": "the image is larger than the upload limit of 20 MB"}
    headers = {"Content-Type": "multipart/form-data"}  # no boundary
    status, body = request(server, "/api/search/image", "POST", b"--x--", WAIT, headers)
    assert status == 400
    assert json.loads(body)["error"].startswith("the upload is not a valid form: ")


def test_screenshot(browser: WebDriver, server: str, tmp_path: Path) -> None:
    open_page(browser, server, "#text=a rocket")
    results(browser, "the text search")
    out = tmp_path / "ui.png"
    assert browser.save_screenshot(str(out))
    with Image.open(out) as shot:
        assert shot.format == "PNG" and shot.width >= 1000
        low, high = zip(*shot.convert("RGB").getextrema())
        assert max(high) - min(low) > 200  # thumbnails and text, not a blank page


def test_serve_refuses_a_taken_port_and_a_missing_index(library: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run("serve", "--db", str(library / ".imgsearch" / "index.db"), "--port", port)
    assert done.exit_code == 1
    assert done.stderr == (
        f"imgsearch: error: cannot serve on 127.0.0.1:{port}: Address already in use; "
        "choose another --port\n"
    )
    done = run("serve", "--db", str(tmp_path / "none.db"))
    assert done.exit_code == 1 and done.stderr.startswith("imgsearch: error: no index at")
    done = run("serve", "--port", "70000", "--db", str(library / ".imgsearch" / "index.db"))
    assert done.exit_code == 2 and "70000" in done.stderr  # click's own usage error
