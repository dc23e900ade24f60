// imgsearch web UI: plain JavaScript, no build step. Talks to the JSON routes of imgsearch/web.py.
"use strict";

const $ = (id) => document.getElementById(id);
let uploadLimit = 20 * 1024 * 1024;
let latest = 0; // only the newest search may fill the grid
const loaded = {}; // tabs already filled: clusters, duplicates

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function getJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the imgsearch server does not answer (is it still running?)");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function sharedText(shared, most = 5) {
  if (!shared.length) return "(no caption)";
  const more = shared.length > most ? ` (+${shared.length - most} more)` : "";
  return shared.slice(0, most).join("; ") + more;
}

// One image as a card: thumbnail (opens the full image), score, name, shared captions,
// and "More like this".
function card(item, extra = {}) {
  const figure = el("figure", "hit");
  figure.dataset.id = item.id;
  figure.dataset.path = item.path;
  const link = el("a", "thumb");
  link.href = `/image/${item.id}`;
  link.target = "_blank";
  link.rel = "noopener";
  const img = el("img");
  img.src = `/thumb/${item.id}`;
  img.alt = item.name;
  img.loading = "lazy";
  link.append(img);
  const caption = el("figcaption");
  const line = el("div", "line");
  if (item.score !== undefined) line.append(el("span", "score", item.score.toFixed(4)));
  if (extra.badge) line.append(el("span", "badge", extra.badge));
  const name = el("span", "name", item.name);
  name.title = item.path;
  line.append(name);
  caption.append(line);
  if (item.taken) {
    const when = el("div", "taken", item.taken.slice(0, 10) + (item.camera ? ` · ${item.camera}` : ""));
    when.title = item.taken_from === "exif" ? `taken ${item.taken} (EXIF)` : `file time ${item.taken}`;
    caption.append(when);
  }
  if (item.shared) {
    const shared = el("div", "shared", "shares: " + sharedText(item.shared));
    shared.title = item.shared.join("; ");
    caption.append(shared);
  }
  const more = el("button", "more", "More like this");
  more.type = "button";
  more.addEventListener("click", () => {
    location.hash = `#similar=${item.id}`;
  });
  caption.append(more);
  figure.append(link, caption);
  return figure;
}

// The filters row: texts to rank down, a date range, newest first; sent with every search.
function filterParams() {
  const params = new URLSearchParams();
  const not = $("not").value.trim();
  if (not) params.append("not", not);
  if ($("after").value) params.append("after", $("after").value);
  if ($("before").value) params.append("before", $("before").value);
  if ($("newest").checked) params.append("sort", "date");
  return params;
}

function withFilters(url, extra = {}) {
  const params = filterParams();
  for (const [key, value] of Object.entries(extra)) if (value) params.append(key, value);
  const query = params.toString();
  return query ? url + (url.includes("?") ? "&" : "?") + query : url;
}

function showQuery(query, upload) {
  const box = $("query");
  box.replaceChildren();
  if (query.kind === "text") {
    box.append(el("p", "query-text", `“${query.text}”`));
    return;
  }
  const name = upload ? upload.name : query.name;
  const img = el("img");
  img.alt = name;
  img.src = upload ? upload.preview : `/thumb/${query.id}`;
  const words = el("div");
  words.append(el("div", "name", query.text ? `Like ${name} and “${query.text}”` : `Like ${name}`));
  if (query.captions && query.captions.length) {
    words.append(el("p", "captions", "looks like: " + query.captions.join("; ")));
  }
  box.append(img, words);
}

function showResults(data, upload) {
  showQuery(data.query, upload);
  const hits = data.hits;
  $("search-note").textContent = hits.length
    ? `${hits.length} most similar, best first; "shares" lists the captions a photo has in common with the query.`
    : "No results.";
  $("results").replaceChildren(...hits.map((hit) => card(hit)));
}

async function search(url, options, upload) {
  const mine = ++latest;
  showError("");
  $("search-note").textContent = "Searching…";
  try {
    const data = await getJSON(url, options);
    if (mine === latest) showResults(data, upload);
  } catch (err) {
    if (mine === latest) {
      $("search-note").textContent = "";
      showError(err.message);
    }
  }
}

function upload(file) {
  if (!file) return;
  selectTab("search");
  history.replaceState(null, "", "#search");
  if (file.size > uploadLimit) {
    showError(`${file.name} is larger than the upload limit of ${uploadLimit / 2 ** 20} MB`);
    return;
  }
  const type = file.type || "application/octet-stream";
  // Words in the text box go with the photo: "like this photo, at night".
  search(
    withFilters("/api/search/image", { q: $("text").value.trim() }),
    { method: "POST", body: file, headers: { "Content-Type": type } },
    { name: file.name, preview: URL.createObjectURL(file) },
  );
}

async function loadClusters() {
  const k = $("cluster-k").value;
  const box = $("clusters");
  box.replaceChildren(el("p", "note", "Grouping…"));
  showError("");
  try {
    const data = await getJSON(k ? `/api/clusters?k=${encodeURIComponent(k)}` : "/api/clusters");
    $("cluster-k").value = data.k;
    box.replaceChildren(
      ...data.clusters.map((cluster) => {
        const section = el("section", "cluster");
        const title = el("h2", "", cluster.name + " ");
        title.append(el("span", "count", `(${cluster.members.length})`));
        const grid = el("div", "grid");
        grid.append(...cluster.members.map((m) => card(m)));
        section.append(title, el("p", "captions", cluster.captions.join("; ")), grid);
        return section;
      }),
    );
    loaded.clusters = true;
  } catch (err) {
    box.replaceChildren();
    showError(err.message);
  }
}

async function loadDuplicates() {
  const box = $("duplicates");
  box.replaceChildren(el("p", "note", "Looking for copies…"));
  showError("");
  try {
    const data = await getJSON("/api/duplicates");
    if (!data.groups.length) {
      box.replaceChildren(el("p", "empty", "No duplicates found."));
    } else {
      const titles = { exact: "Exact duplicates", copy: "Edited copies", similar: "Similar shots (never moved unless asked)" };
      const tiers = el("div", "tiers");
      for (const [tier, title] of Object.entries(titles)) {
        const mine = data.groups.filter((g) => g.tier === tier);
        const column = el("div", `tier ${tier}`);
        const heading = el("h2", "", `${title} `);
        heading.append(el("span", "count", `(${mine.length})`));
        column.append(heading);
        if (!mine.length) column.append(el("p", "empty", "None."));
        mine.forEach((group, n) => {
          const section = el("section", "dupes");
          const name = el("h3", "", `Group ${n + 1} `);
          name.append(el("span", "count", `(${group.others.length + 1} images, score ≥ ${group.score.toFixed(3)})`));
          const grid = el("div", "grid");
          grid.append(card(group.keep, { badge: "keep" }));
          grid.append(...group.others.map((o) => card(o, { badge: o.tier })));
          section.append(name, el("p", "reason", `keep: ${group.keep_reason}`), grid);
          column.append(section);
        });
        tiers.append(column);
      }
      box.replaceChildren(tiers);
    }
    loaded.duplicates = true;
  } catch (err) {
    box.replaceChildren();
    showError(err.message);
  }
}

function selectTab(name) {
  for (const link of document.querySelectorAll("nav.tabs a")) {
    link.classList.toggle("active", link.dataset.tab === name);
  }
  for (const panel of document.querySelectorAll("[data-panel]")) {
    panel.hidden = panel.dataset.panel !== name;
  }
}

// The address says what is shown: #text=..., #similar=ID, #clusters, #duplicates.
function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash === "clusters" || hash === "duplicates") {
    selectTab(hash);
    if (!loaded[hash]) (hash === "clusters" ? loadClusters : loadDuplicates)();
    return;
  }
  selectTab("search");
  if (hash.startsWith("text=")) {
    const text = hash.slice(5);
    $("text").value = text;
    search(withFilters(`/api/search/text?q=${encodeURIComponent(text)}`));
  } else if (hash.startsWith("similar=")) {
    $("text").value = "";
    search(withFilters(`/api/similar/${encodeURIComponent(hash.slice(8))}`));
  }
}

function setUp() {
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    const target = "#text=" + encodeURIComponent(text);
    if (location.hash === target) route();
    else location.hash = target;
  });
  $("file").addEventListener("change", (event) => {
    upload(event.target.files[0]);
    event.target.value = ""; // the same file again is a new search
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
  // A file dropped anywhere else must not replace the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("cluster-go").addEventListener("click", loadClusters);
  window.addEventListener("hashchange", route);

  getJSON("/api/status")
    .then((status) => {
      uploadLimit = status.upload_limit;
      const plural = status.images === 1 ? "" : "s";
      $("status").textContent = `${status.images} image${plural} in ${status.root} · model ${status.model}`;
    })
    .catch((err) => showError(err.message));
  route();
}

setUp();
