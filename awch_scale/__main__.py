"""``python -m awch_scale ...`` is ``awch-scale ...`` (also ``torchrun ... -m awch_scale
analyze RECIPE``)."""

from awch_scale.cli import main

if __name__ == "__main__":
    main()
