"""The docs: README.md is a short landing page, the MkDocs site builds with --strict (a broken
link, anchor or snippet fails), and the sections the README used to hold each have a page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr}\n{proc.stdout}"
    return out


def test_mkdocs_build_strict_passes(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "compare-runs.png").is_file()


def test_snippets_are_included_in_the_built_pages(site: Path) -> None:
    # What each page includes from README.md and benchmarks/*.md reaches the HTML.
    expected = {
        "index.html": ["make demo", "make test", "roadseg-unet@champion", "kustomize base"],
        "contributing/benchmarks/data/index.html": ["542.5", "not met"],
        "contributing/benchmarks/training/index.html": ["1533", "No GPU was"],
        "contributing/benchmarks/serving/index.html": ["25.7", "2258 requests", "108 %"],
        "contributing/benchmarks/batching/index.html": ["CorkDispatcher", "17.6", "14.2"],
    }
    for page, needles in expected.items():
        html = (site / page).read_text()
        for needle in needles:
            assert needle in html, f"{page} lacks {needle!r}"
    # An include line the extension did not replace would reach the HTML as text.
    unresolved = re.compile(r'--8(?:<|&lt;)--\s+(?:"|&quot;)')
    for page in site.rglob("*.html"):
        assert not unresolved.search(page.read_text()), f"unresolved snippet in {page}"


def test_readme_is_a_short_landing_page_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert "make demo" in text and "make test" in text
    quick = text[text.index("## Quick start") :]
    assert "make demo   # creates .venv" in quick and "make test   # creates .venv" in quick


def test_readme_relative_links_point_to_existing_files() -> None:
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", README.read_text())
    relative = [link for link in links if not re.match(r"[a-z]+:|#", link)]
    assert relative, "README.md links to no page"
    missing = [link for link in relative if not (REPO / link.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages
    assert [p for p in pages if p not in nav] == []


# Each section of the old 1,170-line README and the page it moved to (title = the page's h1).
MOVED = {
    "Development: dependencies and upgrades": (
        "contributing/development.md",
        "Development: dependencies and upgrades",
    ),
    "Module map": ("contributing/module-map.md", "Module map"),
    "Configuration": ("data-science/configuration.md", "Configuration"),
    "Data": ("data-science/data.md", "Data"),
    "Label validation": ("data-science/validation.md", "Label validation"),
    "Models, losses, metrics": ("data-science/models.md", "Models, losses, metrics"),
    "Testing": ("contributing/tests.md", "Tests"),
    "Training throughput": ("contributing/benchmarks/training.md", "Training throughput"),
    "Training and evaluation": ("data-science/training.md", "Training and evaluation"),
    "Pipeline": ("platform/pipeline.md", "Pipeline"),
    "Compare runs": ("data-science/comparing-runs.md", "Comparing runs"),
    "KITTI Road": ("data-science/kitti.md", "KITTI Road"),
    "Serving": ("api/routes.md", "Service and routes"),
    "Hostile traffic": ("api/limits.md", "Limits and hostile traffic"),
    "Clients": ("api/clients.md", "Clients"),
    "Drift monitoring": ("platform/drift.md", "Drift monitoring"),
    "Performance": ("contributing/benchmarks/serving.md", "Serving performance"),
    "Live stream": ("api/stream.md", "Live stream"),
    "Web UI": ("api/web-ui.md", "Web UI"),
    "Deploy to Kubernetes": ("platform/deploy.md", "Deploy to Kubernetes"),
    "Registry → Bento → cluster": ("platform/release.md", "Registry → Bento → cluster"),
}


@pytest.mark.parametrize("section", sorted(MOVED))
def test_old_readme_section_has_its_page(section: str) -> None:
    page, title = MOVED[section]
    assert (DOCS / page).read_text().splitlines()[0] == f"# {title}"


# A few facts per page, so that a rewrite that drops a table or a figure is noticed.
FACTS = {
    "data-science/data.md": ["1/sqrt(frequency)", "dvc exp run -S data.source_dir=data/bdd100k"],
    "data-science/models.md": ["31.04 M-parameter", "bdd100k_fwIoU", "`IoULoss`"],
    "data-science/training.md": ["mlruns-fallback", "test_unet_overfits_four_real_images"],
    "data-science/kitti.md": ["MaxF 91.8 %", "roadseg-kitti-road"],
    "platform/pipeline.md": ["★ champion (v1)", "register.class_iou_floor"],
    "platform/operations.md": ["RoadsegHighP99Latency", "27 tests in ~45 s"],
    "api/limits.md": ["max_inflight_bytes", "request_too_many_pixels", "500 and fetched"],
    "api/stream.md": ["roadseg.key.<key>", "1024 fragments"],
    "contributing/tests.md": ["| all five | 2032 | 91 | 1941 |", "mutation_equivalent.txt"],
    "contributing/module-map.md": ["flag → `MLFLOW_TRACKING_URI` → `./mlruns.db`"],
    "../benchmarks/serve_throughput.md": ["2258 requests, **0 errors**"],
    "../benchmarks/data_throughput.md": ["| LUT / naive | 2.2× | 2.1× | 1.8× | 2.2× |"],
}


@pytest.mark.parametrize("page", sorted(FACTS))
def test_key_facts_kept(page: str) -> None:
    text = (DOCS / page).read_text()
    assert [fact for fact in FACTS[page] if fact not in text] == []


def test_benchmark_figures_sit_next_to_their_script() -> None:
    figures = sorted(BENCHMARKS.glob("*.md"))
    assert figures
    for md in figures:
        assert md.with_suffix(".py").is_file(), f"{md.name} has no benchmark script beside it"
