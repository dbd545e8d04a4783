"""Render a long Markdown reply chunk by chunk in headless Chromium: does a chunk's cost stay flat?

A 20,000-token reply (sections of headings, paragraphs, lists, code and tables) is fed to
``static/markdown.js`` five tokens at a time, as the page does while it streams, and the time of every
``update()`` is taken with ``performance.now()``. The same chunks are then rendered the way the page
did before (everything again on each chunk), for contrast.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SECTION = ("## Section {n}\n\nStreaming keeps a chat responsive: the first words arrive while the model is "
           "still thinking about the rest, so the reader starts at once. Here is **bold**, *italic*, `code` "
           "and a [link](https://example.com/{n}).\n\n- first point about {n}\n- second point, with `x = {n}`\n"
           "- third point\n\n```python\ndef section_{n}():\n    return {n} * 2\n```\n\n| key | value |\n|---|---|\n"
           "| n | {n} |\n\n")


def reply(tokens: int) -> list[str]:
    """The reply's tokens (words with their spacing), ``tokens`` of them."""
    words: list[str] = []
    n = 0
    while len(words) < tokens:
        words += re.findall(r"\S+\s*|\s+", SECTION.format(n=n))
        n += 1
    return words[:tokens]


def run(tokens: int = 20_000, per_chunk: int = 5) -> dict:
    """Time every chunk's update(): the renderer alone, then with the layout a browser would do after it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed (requirements-dev.txt)"}
    if not Path(CHROMIUM).exists():
        return {"skipped": f"{CHROMIUM} is not installed"}
    words = reply(tokens)
    chunks = ["".join(words[i:i + per_chunk]) for i in range(0, len(words), per_chunk)]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        page.set_content("<!doctype html><div id=box></div>")
        page.add_script_tag(path=str(ROOT / "static" / "markdown.js"))
        measure = """([chunks, withLayout, again]) => {
            const box = document.getElementById("box");
            const renderer = window.streamchatMarkdown.render(box);
            let text = "";
            const times = [];
            for (const chunk of chunks) {
                text += chunk;
                const start = performance.now();
                if (again) renderer.reset();  // the way the page rendered before: all of it, every chunk
                renderer.update(text);
                if (withLayout) box.offsetHeight;  // and lay the page out, as a browser does before painting
                times.push(performance.now() - start);
            }
            box.replaceChildren();
            return times;
        }"""
        timings = page.evaluate(measure, [chunks, False, False])
        laid_out = page.evaluate(measure, [chunks, True, False])
        redrawn = page.evaluate(measure, [chunks[:1000], True, True])  # 1,000 chunks are enough to see it
        browser.close()
    figures = {"tokens": len(words), "chunks": len(chunks), "chars": sum(map(len, chunks))}
    for prefix, times in (("", timings), ("with_layout_", laid_out)):
        tenth = len(times) // 10
        first, last = statistics.mean(times[:tenth]), statistics.mean(times[-tenth:])
        figures.update({f"{prefix}first_tenth_ms_per_chunk": round(first, 3),
                        f"{prefix}last_tenth_ms_per_chunk": round(last, 3),
                        f"{prefix}last_vs_first": round(last / first, 2) if first else None,
                        f"{prefix}p99_ms_per_chunk": round(sorted(times)[int(len(times) * 0.99)], 3)})
    return {**figures,
            "whole_again_first_100_ms_per_chunk": round(statistics.mean(redrawn[:100]), 3),
            "whole_again_chunks_900_1000_ms_per_chunk": round(statistics.mean(redrawn[900:1000]), 3)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
