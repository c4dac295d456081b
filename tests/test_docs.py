"""The README's first command is the one CI runs and ends with an answer; every link of the docs leads somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """A heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_first_command_installs_what_ci_installs_then_asks_the_embedded_default():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    command = first.split("\n.venv/bin/python -m pytest")[0].replace("\\\n", " ")
    installs = [step.strip() for step in command.split("&&")]
    ci = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    ci_installs = [step.strip() for line in ci.splitlines() if line.startswith("python3 -m venv")
                   for step in line.split("&&")]
    assert installs[:-1] == ci_installs
    assert re.fullmatch(r'\.venv/bin/hllama run smollm2 "[^"]+"', " ".join(installs[-1].split()))
    assert first.strip().endswith(".venv/bin/python -m pytest")


def test_every_link_of_the_docs_leads_to_a_page_and_a_heading_that_exist():
    headings = {page: {_anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}
                for page in PAGES}
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", page.read_text()):
            path, anchor = target
            if path.startswith(("http://", "https://")):
                continue
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor[1:] not in headings.get(linked, set())):
                broken.append(f"{page.name}: {path}{anchor}")
    assert broken == []
