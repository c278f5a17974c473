"""``mmopt report``: a saved JSON report (compile, profile, tune, quantize, check, bench) as one
self-contained HTML page, the page ``--html`` writes."""

from __future__ import annotations

from pathlib import Path

import click

from mmopt.cli.common import html_file, out


@click.command("report")
@click.argument("report_json", metavar="RUN.json")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE.html",
              callback=html_file,
              help="Where to write the page. [default: RUN.html]")
def report_cmd(report_json, output):
    """Render RUN.json, a report of compile/profile/tune/quantize/check/bench (their --json output,
    --report file, profile's --json file, or an artifact's NAME.json), as one HTML page that opens
    offline (styles, charts and data inlined)."""
    from mmopt.report import load, write_html

    data = load(report_json)
    path = Path(output) if output else Path(report_json).with_suffix(".html")
    write_html(data, path)
    out.print(f"wrote {path} ({data['kind']} report)")


command = report_cmd
