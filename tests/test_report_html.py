"""`mobench report`'s self-contained HTML page: generated text escaped, the plot inline, rendered by Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TOY, mobench

# A method whose every response carries markup and a pipe, and whose text option lands in its board label.
HOSTILE = '''
from dataclasses import dataclass

from mobench import hookimpl
from mobench.api import Method
from mobench.options import Options, option


@dataclass(frozen=True)
class EchoOptions(Options):
    say: str = option("<script>document.title='pwned'</script>", "text put before every response")


class Echo(Method):
    Options = EchoOptions

    def generate(self, prompts, preferences):
        return [[f"{self.options.say} a|b <b>bold</b> " + "a" * round(6 * p[0]) + "b" * round(6 * p[1]) for _ in prompts]
                for p in preferences]


@hookimpl
def register_methods(register):
    register.method("echo", Echo, "test-only: responses with markup")
'''
SCRIPT = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A store with the toy method and the hostile one (its label holds a '|'), reported with `mobench report`."""
    root = tmp_path_factory.mktemp("report")
    plugins = root / "plugins"
    plugins.mkdir()
    shutil.copy(TOY / "toy_plugin.py", plugins)
    (plugins / "hostile_plugin.py").write_text(HOSTILE)
    results, out = root / "results", root / "out"
    for args in (("-m", "letters"), ("-m", "echo", "-o", "say=x|y " + SCRIPT)):
        mobench("--plugins-dir", str(plugins), "run", "-t", "toy", *args, "--results", str(results), check=True)
    proc = mobench("--plugins-dir", str(plugins), "report", "-t", "toy", "--results", str(results), "--out", str(out),
                   "--resamples", "50", "--samples", "3", check=True)
    assert "report.html" in proc.stdout
    return out


def test_html_escapes_every_generated_text_and_holds_the_plot_inline(report):
    page = (report / "report.html").read_text()
    assert "<script" not in page.lower()  # neither the generations' nor the option's markup survives as a tag
    assert "<b>bold" not in page
    escaped = "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;"
    # the response text (3 prompts x 3 grid points) and the label (leaderboard, pairwise, per-point tables)
    assert page.count(escaped + " a|b &lt;b&gt;bold&lt;/b&gt;") == 9
    assert f"echo[say=x|y {escaped}]" in page
    # self-contained: no script, no link or source outside the page, the plot embedded byte for byte
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:)', page)
    assert "default-src 'none'" in page
    [png] = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(png) == (report / "pareto.png").read_bytes()
    for section in ("Leaderboard", "Pairwise hypervolume differences", "Pareto plot", "Per grid point", "Generations"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("<details>") == 6  # one per grid point of each of the two lines


def test_markdown_escapes_pipes_in_every_cell(report):
    md = (report / "leaderboard.md").read_text()
    assert "echo[say=x\\|y &lt;script&gt;" in md and "<script" not in md

    def cells(line: str) -> int:  # unescaped pipes: the column separators
        return len(re.findall(r"(?<!\\)\|", line))

    tables = [block.splitlines() for block in md.split("\n\n") if block.startswith("|")]
    assert len(tables) == 3  # leaderboard, pairwise, per point
    for table in tables:
        assert len({cells(line) for line in table}) == 1, table


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium); "
                    "the HTML checks above still run")
def test_headless_chromium_renders_the_table_and_the_plot_and_runs_no_script(report, tmp_path):
    from PIL import Image

    page = (report / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1400,1100", page],
                          capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    assert "<title>mobench leaderboard: toy" in dom and "pwned</title>" not in dom  # the escaped script never ran
    assert "letters" in dom and "echo[say=x|y" in dom
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1100)
    colours = image.getcolors(maxcolors=1 << 20)

    def pixels(test) -> int:
        return sum(n for n, rgb in colours if test(*rgb))

    # The table: its header cells' background (#f6f8fa) and borders (#d0d7de) cover real area.
    assert pixels(lambda r, g, b: (r, g, b) == (0xF6, 0xF8, 0xFA)) > 5000
    assert pixels(lambda r, g, b: (r, g, b) == (0xD0, 0xD7, 0xDE)) > 1000
    # The plot: matplotlib's first two series colours (C0 blue, C1 orange); the page's own CSS is grey only,
    # so these hues show only if the embedded PNG was decoded and drawn.
    assert pixels(lambda r, g, b: b > r + 60 and b > g + 20 and b > 120) > 200
    assert pixels(lambda r, g, b: r > 200 and 80 < g < 180 and b < 90) > 200
