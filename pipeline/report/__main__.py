"""`python -m pipeline.report`: the experiment report."""

from pipeline.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
