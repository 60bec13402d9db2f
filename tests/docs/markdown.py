"""Every Markdown file of the project renders on GitHub as written: no table broken into
a paragraph (a blank line, or a row that is not one, ends a GFM table, and the rows after
it render as text), and every relative link (and its #anchor) points at something that
exists. Run with markdown-it-py (CommonMark, with GFM's tables):

    python3 tests/docs/markdown.py
"""
import pathlib
import re
import sys

from markdown_it import MarkdownIt

root = pathlib.Path(__file__).resolve().parents[2]
md = MarkdownIt("commonmark").enable("table")
files = sorted(p for p in root.rglob("*.md") if not any(part in {"target", "node_modules", ".git"} or part.startswith("target-") for part in p.relative_to(root).parts))


def slug(text):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    tokens = md.parse(path.read_text())
    return {slug(tokens[i + 1].content) for i, t in enumerate(tokens) if t.type == "heading_open"}


failures = []
for path in files:
    tokens = md.parse(path.read_text())
    shown = path.relative_to(root)
    for i, token in enumerate(tokens):
        if token.type == "paragraph_open":
            text = tokens[i + 1].content
            if text.startswith("|") and text.count("|") >= 2:
                line = token.map[0] + 1 if token.map else "?"
                failures.append(f"{shown}:{line}: a table row renders as a paragraph (a broken table): {text.splitlines()[0][:80]}")
        if token.type != "inline":
            continue
        for child in token.children or []:
            if child.type != "link_open":
                continue
            href = child.attrGet("href") or ""
            if re.match(r"^[a-z]+:", href) or href.startswith("//"):
                continue
            target, _, anchor = href.partition("#")
            target_path = (path.parent / target).resolve() if target else path
            if not target_path.exists():
                failures.append(f"{shown}: link to {href}: no such file")
            elif anchor and target_path.suffix == ".md" and anchor not in anchors(target_path):
                failures.append(f"{shown}: link to {href}: no such heading")

for failure in failures:
    print("FAIL:", failure)
print(f"{len(files)} Markdown files checked, {len(failures)} problems")
sys.exit(1 if failures else 0)
