"""The profile report (``mmopt profile --json``): one inference kernel by kernel, each kernel with
the ONNX nodes it computes, its time, FLOPs and share of the FMA peak; onnxruntime by op type with
``--vs onnxruntime``."""

from __future__ import annotations

from mmopt.report.kernels import add_profile
from mmopt.report.page import Page


def build(page: Page) -> None:
    d = page.data
    page.title = f"mmopt profile: {d.get('model', '?')} on {d.get('target', '?')}"
    page.subtitle = (f"artifact {d.get('artifact', '?')}, {d.get('threads')} thread(s), median of "
                     f"{d.get('runs')} runs")
    add_profile(page, page.section("Kernels", "kernels"))
