"""DVC stage: raw source → validated, split, train-normalised arrays in data/processed/."""

from __future__ import annotations

from pipeline.config import load_params
from pipeline.data import preprocess, save_splits
from pipeline.stages._common import parse_stage_args, stage_entry


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the preprocess stage."""
    args = parse_stage_args(argv, __doc__, {"out": "data/processed"})
    params = load_params(args.params)
    splits, meta = preprocess(params.data, params.seed)
    save_splits(args.out, splits, meta)


if __name__ == "__main__":
    main()
