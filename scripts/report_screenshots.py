"""Make docs/reports.md's two report screenshots from a real run: docs/images/report-html.png (the
pytest-html report) and docs/images/github-summary.png (the GitHub job summary, its markdown
rendered as GitHub styles it, roughly).

Needs the engines of scripts/provision.sh, Debian's chromium, pytest-html and the `markdown`
package (pip install markdown). Run from the checkout: python scripts/report_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import markdown

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
TESTS = {
    "checkout": """
        def test_total():
            assert sum([1, 2, 3]) == 6


        def test_discount():
            price = {"net": 90, "vat": 18}
            assert price == {"net": 90, "vat": 19}
        """,
    "plots": """
        import os
        import struct
        import zlib


        def chart(width, height):
            rows = b""
            for y in range(height):
                bar = [(x // 40) * 30 + 40 for x in range(width)]
                rows += b"\\x00" + b"".join(
                    bytes((60, 120, 200)) if height - y < bar[x] else bytes((255, 255, 255)) for x in range(width)
                )

            def chunk(kind, data):
                return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

            head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
            return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


        def test_chart():
            os.makedirs("/lrun/artifacts", exist_ok=True)
            with open("/lrun/artifacts/chart.png", "wb") as f:
                f.write(chart(240, 160))
        """,
}
CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; font-size: 14px;
       color: #1f2328; margin: 24px; max-width: 980px; }
h3 { border-bottom: 1px solid #d1d9e0; padding-bottom: 6px; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #d1d9e0; padding: 6px 13px; }
tr:nth-child(2n) { background: #f6f8fa; }
code { background: #eff1f3; border-radius: 6px; padding: 2px 5px; font-size: 85%; }
a { color: #0969da; text-decoration: none; }
"""


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "pytest.ini").write_text("[pytest]\n")
        for name, source in TESTS.items():
            (work / name).mkdir()
            (work / name / f"test_{name}.py").write_text(textwrap.dedent(source))
        env = dict(os.environ, LRUN_STATE_DIR=str(work / "state"), GITHUB_ACTIONS="true")
        env.update(GITHUB_STEP_SUMMARY=str(work / "summary.md"), GITHUB_WORKSPACE=str(work))
        env.update(GITHUB_REPOSITORY="example/shop", GITHUB_SHA="4f2c1e9")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--lrun-machine=local",
                "--lrun-image=lrun-python:bookworm",
                "checkout",
                "plots",
                "--html=out/report.html",
                "--junitxml=out/junit.xml",
                "-o",
                "junit_logging=system-out",
            ],
            cwd=work,
            env=env,
            check=False,
        )
        page = work / "summary.html"
        body = markdown.markdown((work / "summary.md").read_text(), extensions=["tables"])
        page.write_text(f"<html><head><style>{CSS}</style></head><body>{body}</body></html>")
        shoot(f"{(work / 'out' / 'report.html').as_uri()}?collapsed=", IMAGES / "report-html.png", work, 2000)
        shoot(page.as_uri(), IMAGES / "github-summary.png", work, 520)


def shoot(url: str, dest: Path, work: Path, height: int) -> None:
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work / 'chromium'}",
            "--virtual-time-budget=5000",
            f"--window-size=1100,{height}",
            f"--screenshot={dest}",
            url,
        ],
        check=True,
        capture_output=True,
    )
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
