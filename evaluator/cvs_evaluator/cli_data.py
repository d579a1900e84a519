"""`cvs-data`: import WVS survey files, inspect what is loaded, print human baselines."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Survey data: WVS wave 7 answers as weighted shares per country and question.

    \b
    Typical use:
      cvs-data import-wvs $CVS_DATA/wvs7/microdata/*.csv.gz --out wvs.parquet
      cvs-data show
      cvs-data baselines --country DEU --country JPN
    """
