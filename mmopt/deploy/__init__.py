"""Deployment without Python: a bundle is an artifact plus TVM's runtime for its architecture, a
small C API (``include/mmopt_model.h``), a prebuilt ``mmopt-run`` and an example program.

```python
import mmopt

bundle = mmopt.package("out/model", "bundle/")        # x86_64 or aarch64, from the artifact
print(bundle.runtime_bytes)
```

See docs/deploy.md. The runtime's sources are in ``native/`` of the checkout.
"""

from __future__ import annotations

from .bundle import Bundle, bundle_for, package, run_bundle, run_native

__all__ = ["Bundle", "bundle_for", "package", "run_bundle", "run_native"]
