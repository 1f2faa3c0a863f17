"""The CPU vendor, which the golden tests' arrays are kept by (seeded fits differ in their
last digits between CPU vendors)."""

from __future__ import annotations

from pathlib import Path


def cpu_vendor() -> str:
    """The CPU's ``vendor_id`` (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
