"""CITATION.cff and the README's BibTeX cite the paper for the method and this library for the code.

The paper: Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships for Person
Re-identification", AAAI 2021 (HRNet is the method's name inside it). ``cffconvert --validate``
checks the file against the CFF 1.2.0 schema when cffconvert is installed; the schema-light
checks below always run.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hrnet_pyg

REPO = Path(__file__).resolve().parents[1]
CFF = REPO / "CITATION.cff"
PAPER_TEXT = REPO.parent / "shared" / "paper" / "hrnet_aaai2021.txt"  # the spec, when present

TITLE = "Learning Hybrid Relationships for Person Re-identification"
AUTHORS = [("Liu", "Shuang"), ("Huang", "Wenmin"), ("Zhang", "Zhong")]
# The attribution this project once made by mistake (written as a pattern, so that a plain grep
# for it finds nothing in the repository, this file included).
WRONG_AUTHOR = re.compile(r"\bXu\s+et\s+al\b")


def _cff() -> dict:
    return yaml.safe_load(CFF.read_text())


def test_citation_cff_has_the_required_keys_and_this_version():
    cff = _cff()
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff needs a non-empty '{key}'"
    assert cff["type"] == "software"
    assert all(isinstance(a, dict) and (a.get("name") or a.get("family-names")) for a in cff["authors"])
    assert str(cff["version"]) == hrnet_pyg.__version__, "CITATION.cff's version must follow hrnet_pyg.__version__"


def test_citation_cff_prefers_the_paper_for_the_method():
    paper = _cff()["preferred-citation"]
    assert paper["type"] == "conference-paper"
    assert paper["title"] == TITLE
    assert [(a["family-names"], a["given-names"]) for a in paper["authors"]] == AUTHORS
    assert paper["year"] == 2021
    assert "AAAI" in paper["conference"]["name"]


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason=f"the paper's text is not at {PAPER_TEXT}")
def test_the_cited_title_and_authors_are_the_papers():
    head = PAPER_TEXT.read_text().splitlines()[:2]
    assert head[0].strip() == TITLE
    for family, given in AUTHORS:
        assert f"{given} {family}" in head[1]


def test_readme_bibtex_cites_the_paper_and_the_library():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bibtex\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no ```bibtex block"
    text = "\n".join(blocks)
    entries = re.findall(r"@(\w+)\{", text)
    assert entries.count("inproceedings") == 1 and entries.count("software") == 1, entries
    assert f"title = {{{TITLE}}}" in text
    assert "author = {" + " and ".join(f"{f}, {g}" for f, g in AUTHORS) + "}" in text
    assert "year = {2021}" in text and "AAAI" in text


def test_no_file_credits_the_paper_to_the_wrong_authors():
    found = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if not path.is_file() or rel.split("/")[0] in {".git", ".venv", "runs", "demo_output"} or "cache" in rel:
            continue
        if path.suffix not in {".py", ".md", ".cff", ".cfg", ".toml", ".yaml", ".yml", ".json", ".txt", ".csv"}:
            continue
        if WRONG_AUTHOR.search(path.read_text(errors="replace")):
            found.append(rel)
    assert not found, f"the paper is by Liu, Huang and Zhang (AAAI 2021); wrong authors in: {', '.join(found)}"


def _cffconvert() -> str:
    pytest.importorskip("cffconvert")
    exe = shutil.which("cffconvert", path=str(Path(sys.executable).parent)) or shutil.which("cffconvert")
    if exe is None:
        pytest.skip("the cffconvert command is not on the PATH")
    return exe


def test_cffconvert_validates_the_file():
    proc = subprocess.run([_cffconvert(), "--validate", "-i", str(CFF)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cffconvert_refuses_a_broken_copy(tmp_path):
    broken = tmp_path / "CITATION.cff"
    broken.write_text(CFF.read_text().replace("type: conference-paper", "type: conference-papr"))
    proc = subprocess.run([_cffconvert(), "--validate", "-i", str(broken)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
