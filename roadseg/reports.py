"""HTML reports that render with no network: CDN scripts and stylesheets inlined from npm packages.

Great Expectations' Data Docs load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from
public CDNs, so in an air-gapped cluster (or a KFP HTML artifact viewed offline) they open as an
unstyled page with empty tables. `make_offline` replaces every such `<script src>` and
`<link rel=stylesheet href>` with the same file inlined from a vendored copy of its npm package
(fonts referenced by the CSS become data URIs), so each page is one self-contained file. The
Evidently drift report embeds its own library already; it goes through the same pass, which
then finds nothing to do.

The packages are fetched once with npm's own client, pinned, into `roadseg/_report_assets/`
(git-ignored; each package keeps its licence file beside its files):

    make report-assets            # = python -m roadseg.reports  (npm pack, needs the registry)
"""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent / "_report_assets"
# npm package -> (version, files kept; fnmatch-style globs inside the package). Versions match
# those the GX 1.x templates name; one version per package.
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "jquery": ("3.7.1", ("dist/jquery.min.js",)),
    "bootstrap": ("4.3.1", ("dist/css/bootstrap.min.css", "dist/js/bootstrap.min.js")),
    "popper.js": ("1.12.9", ("dist/umd/popper.min.js",)),
    "bootstrap-table": (
        "1.19.1",
        ("dist/bootstrap-table.min.*", "dist/extensions/filter-control/*"),
    ),
    "bootstrap-datepicker": ("1.9.0", ("dist/css/*.min.css", "dist/js/*.min.js")),
    "@fortawesome/fontawesome-free": ("6.6.0", ("css/all.min.css", "webfonts/*.woff2")),
    "@forevolve/bootstrap-dark": ("1.1.0", ("dist/css/bootstrap-prefers-dark.css",)),
    "vega": ("5.33.1", ("build/vega.min.js",)),
    "vega-lite": ("5.23.0", ("build/vega-lite.min.js",)),
    "vega-embed": ("6.29.0", ("build/vega-embed.min.js",)),
}
# What a bare package URL (`https://cdn.jsdelivr.net/npm/vega@5`) serves.
MAIN_FILE = {p: PACKAGES[p][1][0] for p in ("vega", "vega-lite", "vega-embed")}
# CDN URL patterns that do not spell the npm package: (regex, package, path template).
CDN_RULES: tuple[tuple[str, str, str], ...] = (
    (r"code\.jquery\.com/jquery-[\d.]+\.min\.js", "jquery", "dist/jquery.min.js"),
    (
        r"(?:maxcdn|stackpath)\.bootstrapcdn\.com/bootstrap/[\d.]+/(css|js)/(.+)",
        "bootstrap",
        "dist/{0}/{1}",
    ),
    (r"cdnjs\.cloudflare\.com/ajax/libs/popper\.js/[\d.]+/(.+)", "popper.js", "dist/{0}"),
    (
        r"cdnjs\.cloudflare\.com/ajax/libs/bootstrap-datepicker/[\d.]+/(.+)",
        "bootstrap-datepicker",
        "dist/{0}",
    ),
    (
        r"cdnjs\.cloudflare\.com/ajax/libs/font-awesome/[\d.]+/(.+)",
        "@fortawesome/fontawesome-free",
        "{0}",
    ),
)
NPM_CDN = re.compile(
    r"(?:unpkg\.com|cdn\.jsdelivr\.net/npm)/((?:@[^/@]+/)?[^/@]+)(?:@[^/]+)?/?(.*)"
)
TAG = re.compile(r"<(script|link)\b[^>]*?\b(?:src|href)=[\"'](https?://[^\"']+)[\"'][^>]*>"
                 r"(?:\s*</script>)?", re.IGNORECASE | re.DOTALL)  # fmt: skip
IMG = re.compile(r"<img\b[^>]*?\bsrc=[\"']https?://[^>]*>", re.IGNORECASE | re.DOTALL)
CSS_URL = re.compile(r"url\(\s*[\"']?(?!data:|https?:|#)([^\"')?#]+)[^)]*\)")
MIME = {".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf", ".svg": "image/svg+xml",
        ".png": "image/png", ".gif": "image/gif"}  # fmt: skip


def local_asset(url: str, asset_dir: Path = ASSET_DIR) -> Path | None:
    """The vendored file a CDN URL stands for, or None when it is not one we vendor."""
    bare = url.split("://", 1)[-1].split("?", 1)[0]
    for pattern, package, template in CDN_RULES:
        m = re.fullmatch(pattern, bare)
        if m:
            return asset_dir / package / template.format(*m.groups())
    m = NPM_CDN.fullmatch(bare)
    if m and m.group(1) in PACKAGES:
        package, path = m.group(1), m.group(2) or MAIN_FILE.get(m.group(1), "")
        candidate = asset_dir / package / path
        # bootstrap-table-filter-control.css is only vendored minified (same rules).
        if not candidate.is_file() and candidate.suffix == ".css":
            candidate = candidate.with_name(candidate.stem + ".min.css")
        return candidate
    return None


def _inline_css(css: str, base: Path) -> str:
    """Fonts/images a stylesheet points at, as data URIs; truetype fallbacks dropped (woff2 is
    read by every browser that runs these reports, and inlining both doubles the page)."""
    css = re.sub(r",\s*url\([^)]*\.ttf\)\s*format\([\"']truetype[\"']\)", "", css)

    def data_uri(m: re.Match[str]) -> str:
        target = (base / m.group(1)).resolve()
        if not target.is_file():
            return m.group(0)
        payload = base64.b64encode(target.read_bytes()).decode()
        return f"url(data:{MIME.get(target.suffix, 'application/octet-stream')};base64,{payload})"

    return CSS_URL.sub(data_uri, css)


def make_offline(html_path: Path, asset_dir: Path = ASSET_DIR) -> list[str]:
    """Inline every vendored CDN script/stylesheet of one HTML file, in place; remote images
    (the GX logo) become their alt text and remote icons are dropped.

    Returns:
        The external script/stylesheet URLs left in the page (not vendored, or the assets are
        not fetched yet); empty when the page needs no network.
    """
    html_path = Path(html_path)
    html = html_path.read_text(encoding="utf-8")
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        kind, url = m.group(1).lower(), m.group(2)
        if kind == "link" and not re.search(r"rel=[\"']?stylesheet", m.group(0), re.I):
            # Icons and preconnect hints are dropped: nothing a page needs to render.
            hint = re.search(r"rel=[\"']?(shortcut icon|icon|preconnect|dns-prefetch)", m.group(0))
            return "" if hint else m.group(0)
        path = local_asset(url, asset_dir)
        if path is None or not path.is_file():
            missing.append(url)
            return m.group(0)
        text = path.read_text(encoding="utf-8")
        if kind == "script":
            text = text.replace("</script", "<\\/script")  # would end the inline block early
            return f"<script>/* {url} */\n{text}\n</script>"
        return f"<style>/* {url} */\n{_inline_css(text, path.parent)}\n</style>"

    def alt_text(m: re.Match[str]) -> str:  # a remote logo: its alt text in its place
        alt = re.search(r"\balt=[\"']([^\"']*)[\"']", m.group(0))
        return f"<span>{alt.group(1) if alt else ''}</span>"

    out = IMG.sub(alt_text, TAG.sub(replace, html))
    if out != html:
        html_path.write_text(out, encoding="utf-8")
    return missing


def make_offline_tree(root: Path, asset_dir: Path = ASSET_DIR) -> dict[str, list[str]]:
    """`make_offline` on every `*.html` under `root` (or `root` itself when it is a file).

    Returns the pages that still need the network, with their URLs; a warning names them and
    how to fetch the assets, but the report itself stays usable online.
    """
    root = Path(root)
    pages = [root] if root.is_file() else sorted(root.rglob("*.html"))
    left = {str(p): urls for p in pages if (urls := make_offline(p, asset_dir))}
    if left:
        urls = sorted({u for us in left.values() for u in us})
        hint = "" if asset_dir.is_dir() else f" ({asset_dir} missing: run `make report-assets`)"
        log.warning("%d report page(s) still load %s from the network%s", len(left), urls, hint)
    return left


def fetch_assets(dest: Path = ASSET_DIR, packages: Iterable[str] | None = None) -> Path:
    """Download the pinned packages with `npm pack` and keep their report files and licences."""
    from fnmatch import fnmatch

    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        for name in packages or PACKAGES:
            version, globs = PACKAGES[name]
            done = subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=tmp,
                                  check=True, capture_output=True, text=True)  # fmt: skip
            tgz = Path(tmp) / done.stdout.strip().splitlines()[-1]
            with tarfile.open(tgz) as tar:
                for member in tar.getmembers():
                    rel = member.name.removeprefix("package/")
                    keep = any(fnmatch(rel, g) for g in globs) or re.fullmatch(
                        r"LICEN[CS]E(\.\w+)?", rel, re.I
                    )
                    if member.isfile() and keep:
                        target = dest / name / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return dest


if __name__ == "__main__":
    print(fetch_assets(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSET_DIR))
