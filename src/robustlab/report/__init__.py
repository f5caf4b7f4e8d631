"""Reports: a results directory becomes one self-contained HTML page with figures."""

from robustlab.report.build import write_report

__all__ = ["write_report"]
